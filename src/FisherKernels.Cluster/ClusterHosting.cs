using System.Net;
using System.Net.Sockets;
using System.Text;
using FisherKernels.Onnx.Operators;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;

namespace FisherKernels.Cluster;

/// <summary>How silos find each other (<c>--clustering</c>, SPEC §9).</summary>
public abstract record Clustering
{
    /// <summary>One machine: the first silo of a cluster takes ports derived from its name and keeps the membership; later ones join it on free ports.</summary>
    public sealed record Localhost : Clustering;

    /// <summary>Membership in Redis (<c>redis=host:port[,options]</c>, a StackExchange.Redis configuration string).</summary>
    public sealed record Redis(string Configuration) : Clustering;

    /// <summary>Membership in a database (<c>adonet=INVARIANT:CONNECTION-STRING</c>; Orleans' tables created and the provider's assembly present).</summary>
    public sealed record AdoNet(string Invariant, string ConnectionString) : Clustering;

    /// <summary>The clustering <c>--clustering</c> names, or an error naming what is wrong with it.</summary>
    public static Clustering Parse(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value == "localhost") return new Localhost();
        if (value.StartsWith("redis=", StringComparison.Ordinal) && value.Length > "redis=".Length) return new Redis(value["redis=".Length..]);
        if (value.StartsWith("adonet=", StringComparison.Ordinal) && value.IndexOf(':', StringComparison.Ordinal) is int colon and > 7 && colon < value.Length - 1)
            return new AdoNet(value[7..colon], value[(colon + 1)..]);
        throw FisherKernelsException.Argument($"--clustering '{value}' is not localhost, redis=CONFIGURATION or adonet=INVARIANT:CONNECTION-STRING");
    }
}

/// <summary>A running silo: where it listens.</summary>
public sealed record SiloEndpoint(string Cluster, IPEndPoint Silo, IPEndPoint Gateway, bool Primary);

/// <summary>Silo and client set-up for a cluster fit: the silo runs <see cref="ShardFitGrain"/>; the client runs <see cref="ClusterFit"/>.</summary>
public static class ClusterHosting
{
    const string ServiceId = "fisherkernels";

    /// <summary>Localhost ports of a cluster's first silo (silo, gateway): from its name, so silos and clients of one name agree without being told.</summary>
    public static (int Silo, int Gateway) PrimaryPorts(string cluster)
    {
        uint hash = 2166136261; // FNV-1a: stable across processes, unlike string.GetHashCode
        foreach (byte b in Encoding.UTF8.GetBytes(cluster)) hash = (hash ^ b) * 16777619;
        int port = 21000 + (int)(hash % 4000) * 2;
        return (port, port + 1);
    }

    /// <summary>Settings every silo of a fit cluster has: its name, membership, the shard grain's compute context.</summary>
    public static SiloEndpoint ConfigureSilo(ISiloBuilder silo, string cluster, Clustering clustering, Func<OpContext> context)
    {
        ArgumentNullException.ThrowIfNull(silo);
        CheckName(cluster);
        silo.Services.AddSingleton(new ShardFitter(context));
        silo.Configure<ClusterOptions>(o => { o.ClusterId = cluster; o.ServiceId = ServiceId; });
        switch (clustering)
        {
            case Clustering.Localhost:
            {
                var (primarySilo, primaryGateway) = PrimaryPorts(cluster);
                bool primary = IsFree(primarySilo) && IsFree(primaryGateway);
                int siloPort = primary ? primarySilo : FreePort(), gatewayPort = primary ? primaryGateway : FreePort();
                silo.UseLocalhostClustering(siloPort, gatewayPort, primary ? null : new IPEndPoint(IPAddress.Loopback, primarySilo), ServiceId, cluster);
                return new SiloEndpoint(cluster, new IPEndPoint(IPAddress.Loopback, siloPort), new IPEndPoint(IPAddress.Loopback, gatewayPort), primary);
            }
            case Clustering.Redis redis:
                silo.UseRedisClustering(redis.Configuration);
                return ConfigureMachineEndpoints(silo, cluster);
            case Clustering.AdoNet adoNet:
                silo.UseAdoNetClustering(o => { o.Invariant = adoNet.Invariant; o.ConnectionString = adoNet.ConnectionString; });
                return ConfigureMachineEndpoints(silo, cluster);
            default:
                throw new ArgumentOutOfRangeException(nameof(clustering), clustering, "not a clustering");
        }
    }

    /// <summary>A silo on a real cluster: Orleans' usual ports when free (one silo a machine), free ones otherwise; this machine's address.</summary>
    static SiloEndpoint ConfigureMachineEndpoints(ISiloBuilder silo, string cluster)
    {
        int siloPort = IsFree(EndpointOptions.DEFAULT_SILO_PORT) ? EndpointOptions.DEFAULT_SILO_PORT : FreePort();
        int gatewayPort = IsFree(EndpointOptions.DEFAULT_GATEWAY_PORT) ? EndpointOptions.DEFAULT_GATEWAY_PORT : FreePort();
        silo.ConfigureEndpoints(siloPort, gatewayPort, listenOnAnyHostAddress: true);
        return new SiloEndpoint(cluster, new IPEndPoint(IPAddress.Any, siloPort), new IPEndPoint(IPAddress.Any, gatewayPort), false);
    }

    /// <summary>Client settings for a fit coordinator: the cluster, its membership, and a short call timeout (polls are quick; a silent silo is a lost one).</summary>
    public static void ConfigureClient(IClientBuilder client, string cluster, Clustering clustering)
    {
        ArgumentNullException.ThrowIfNull(client);
        CheckName(cluster);
        client.Configure<ClusterOptions>(o => { o.ClusterId = cluster; o.ServiceId = ServiceId; });
        client.Configure<ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromSeconds(10));
        switch (clustering)
        {
            case Clustering.Localhost:
                client.UseLocalhostClustering(PrimaryPorts(cluster).Gateway, ServiceId, cluster);
                break;
            case Clustering.Redis redis:
                client.UseRedisClustering(redis.Configuration);
                break;
            case Clustering.AdoNet adoNet:
                client.UseAdoNetClustering(o => { o.Invariant = adoNet.Invariant; o.ConnectionString = adoNet.ConnectionString; });
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(clustering), clustering, "not a clustering");
        }
    }

    /// <summary>
    /// Runs a silo of <paramref name="cluster"/> until <paramref name="stop"/> (Ctrl-C, SIGTERM): a graceful stop, whose running shard
    /// saves its checkpoint and runs again elsewhere. <paramref name="started"/> is told where it listens once it has joined.
    /// </summary>
    public static async Task RunSiloAsync(string cluster, Clustering clustering, Func<OpContext> context, Action<SiloEndpoint> started, CancellationToken stop)
    {
        ArgumentNullException.ThrowIfNull(started);
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders().AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning)
            .AddFilter("Orleans.Runtime.Silo", LogLevel.Error); // not its start-up advice on server GC
        SiloEndpoint? endpoint = null;
        builder.UseOrleans(silo => endpoint = ConfigureSilo(silo, cluster, clustering, context));
        using IHost host = builder.Build();
        await host.StartAsync(stop);
        started(endpoint!);
        try { await Task.Delay(Timeout.Infinite, stop); }
        catch (OperationCanceledException) { }
        await host.StopAsync(CancellationToken.None);
    }

    /// <summary>A started client of <paramref name="cluster"/>; dispose it to leave.</summary>
    public static async Task<IHost> ConnectAsync(string cluster, Clustering clustering, CancellationToken cancel = default)
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders().AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Error);
        builder.UseOrleansClient(client => ConfigureClient(client, cluster, clustering));
        IHost host = builder.Build();
        try { await host.StartAsync(cancel); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            host.Dispose();
            throw FisherKernelsException.Argument($"fit --cluster {cluster}: cannot reach the cluster ({e.Message}); is a silo running with the same --cluster and --clustering?");
        }
        return host;
    }

    static void CheckName(string cluster)
    {
        if (string.IsNullOrWhiteSpace(cluster)) throw FisherKernelsException.Argument("--cluster needs a name");
    }

    static bool IsFree(int port)
    {
        try
        {
            var listener = new TcpListener(IPAddress.Loopback, port);
            listener.Start();
            listener.Stop();
            return true;
        }
        catch (SocketException) { return false; }
    }

    static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}
