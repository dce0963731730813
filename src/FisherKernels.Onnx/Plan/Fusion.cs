using FisherKernels.Onnx.Graph;
using FisherKernels.Onnx.Operators;

namespace FisherKernels.Onnx.Plan;

/// <summary>
/// Plan-time rewrites: chains of small operators that exporters emit for one layer become one operator
/// that makes one pass over the data. Decomposed LayerNorm and RMSNorm become <see cref="Normalization"/>,
/// tanh and erf GELU become the GELU of <see cref="UnaryElementwise"/> (in derivative plans <see cref="GeluWithSlope"/>,
/// which keeps its slope for the derivative passes); these have derivatives, so derivative plans (variables,
/// values kept) get them too, with the normalization's scale and bias as its inputs (their gradients and
/// tangents flow through it). A constant inside a chain (ε, ½, 0.044715, …) must
/// be known at build time, so a variable there keeps its chain decomposed. Inference plans alone also get
/// MatMul by a constant weight (with the bias Add and a GELU after it) as <see cref="PackedMatMul"/> and
/// scaled dot-product attention as <see cref="FusedAttention"/> (neither has derivatives). A chain fuses only
/// when every intermediate value is read inside the chain alone and is not a graph output (so a layer's
/// input or output, read by its MatMul or the next one, is never fused away); the fused step replaces the
/// chain's last node, so the order stays topological.
/// </summary>
internal sealed class Fusion
{
    private readonly ExecutionPlan plan;
    private readonly List<(Node Node, Operator Op)> steps;
    private readonly Dictionary<string, List<int>> consumers = [];
    private readonly Dictionary<string, int> producers = [];
    private readonly HashSet<string> graphOutputs;
    private readonly bool[] removed;
    private readonly bool derivatives;

    private Fusion(ExecutionPlan plan, List<(Node Node, Operator Op)> steps, bool derivatives)
    {
        this.plan = plan;
        this.steps = steps;
        this.derivatives = derivatives;
        removed = new bool[steps.Count];
        graphOutputs = plan.OutputValueNames.ToHashSet();
        for (int s = 0; s < steps.Count; s++)
        {
            foreach (var output in steps[s].Node.Outputs) producers[output] = s;
            foreach (var input in steps[s].Node.Inputs.Distinct())
                if (input.Length > 0)
                {
                    if (!consumers.TryGetValue(input, out var list)) consumers[input] = list = [];
                    list.Add(s);
                }
        }
    }

    /// <summary>
    /// The steps with every recognised chain replaced by its fused operator; with <paramref name="derivatives"/>
    /// only the chains whose fused operator has derivatives (normalizations and GELUs).
    /// </summary>
    public static List<(Node Node, Operator Op)> Apply(ExecutionPlan plan, List<(Node Node, Operator Op)> steps, bool derivatives)
    {
        var fusion = new Fusion(plan, steps, derivatives);
        for (int s = 0; s < steps.Count; s++)
        {
            if (fusion.removed[s] || steps[s].Node.Domain.Length != 0) continue;
            switch (steps[s].Node.OpType)
            {
                case "ReduceMean": fusion.TryLayerNorm(s); break;
                case "Pow": fusion.TryRmsNorm(s); break;
                case "Tanh": fusion.TryGeluTanh(s); break;
                case "Erf": fusion.TryGeluErf(s); break;
                case "Softmax" when !derivatives: fusion.TryAttention(s); break;
            }
        }
        if (derivatives) return steps.Where((_, s) => !fusion.removed[s]).ToList();
        // After the GELUs: a MatMul takes the GELU after its bias as its epilogue, and its bias Add is not
        // mistaken for part of a GELU.
        for (int s = 0; s < steps.Count; s++)
            if (!fusion.removed[s] && steps[s].Node.OpType == "MatMul" && steps[s].Node.Domain.Length == 0) fusion.TryPackedMatMul(s);
        return steps.Where((_, s) => !fusion.removed[s]).ToList();
    }

    // ---- LayerNorm: mean = ReduceMean(x); d = x − mean; var = ReduceMean(d^2); y = d / √(var + ε) · γ (+ β)

    private void TryLayerNorm(int reduceMean)
    {
        var r1 = Node(reduceMean);
        string x = r1.Inputs[0];
        if (!ReducesLastAxis(reduceMean) || Only(r1.Outputs[0]) is not int sub || !Is(sub, "Sub", x, r1.Outputs[0])) return;
        string d = Node(sub).Outputs[0];
        if (!Consumers(d, out var readers) || readers.Count != 2) return;
        int pow = readers.FirstOrDefault(r => IsSquare(r, d), -1), div = readers.FirstOrDefault(r => Is(r, "Div", d, null), -1);
        if (pow < 0 || div < 0 || Only(Node(pow).Outputs[0]) is not int r2 || Node(r2).OpType != "ReduceMean" || !ReducesLastAxis(r2)) return;
        if (!TryVarianceToRoot(r2, out int sqrt, out float epsilon) || !Is(div, "Div", d, Node(sqrt).Outputs[0])) return;
        if (!TryAffine(div, InfoOf(x).Shape[^1], out var affine, out string gamma, out string? beta)) return;
        var attributes = OperatorAttributes.Empty.Set("epsilon", epsilon).Set("axis", -1L);
        string[] inputs = beta is null ? [x, gamma] : [x, gamma, beta];
        Replace([reduceMean, sub, pow, r2, Producer(Node(sqrt).Inputs[0])!.Value, sqrt, div, .. affine], "LayerNormalization", "", 17, inputs, attributes,
                node => new Normalization(node));
    }

    // ---- RMSNorm: y = x · 1/√(mean(x²) + ε) · γ   (x · (1 / √·) or x / √·)

    private void TryRmsNorm(int pow)
    {
        var p = Node(pow);
        string x = p.Inputs[0];
        if (!IsSquare(pow, x) || Only(p.Outputs[0]) is not int mean || Node(mean).OpType != "ReduceMean" || !ReducesLastAxis(mean)) return;
        if (!TryVarianceToRoot(mean, out int sqrt, out float epsilon) || Only(Node(sqrt).Outputs[0]) is not int after) return;
        int scaled, reciprocal = -1;
        if (Is(after, "Div", x, Node(sqrt).Outputs[0])) scaled = after;
        else if (Node(after).OpType == "Div" && Node(after).Inputs[1] == Node(sqrt).Outputs[0] && ScalarConstant(Node(after).Inputs[0]) == 1
                 && Only(Node(after).Outputs[0]) is int mul && IsCommutative(mul, "Mul", x, Node(after).Outputs[0]))
            (reciprocal, scaled) = (after, mul);
        else return;
        if (!TryAffine(scaled, InfoOf(x).Shape[^1], out var affine, out string gamma, out string? beta) || beta is not null) return;
        var attributes = OperatorAttributes.Empty.Set("epsilon", epsilon).Set("axis", -1L);
        List<int> chain = [pow, mean, Producer(Node(sqrt).Inputs[0])!.Value, sqrt];
        if (reciprocal >= 0) chain.Add(reciprocal);
        chain.AddRange([scaled, .. affine]);
        Replace(chain, "SimplifiedLayerNormalization", OperatorRegistry.MicrosoftDomain, 1, [x, gamma], attributes, node => new Normalization(node));
    }

    /// <summary>ReduceMean(…) → Add(·, ε) → Sqrt: the steps from the mean's reader to the Sqrt, and ε.</summary>
    private bool TryVarianceToRoot(int mean, out int sqrt, out float epsilon)
    {
        sqrt = -1; epsilon = 0;
        string v = Node(mean).Outputs[0];
        if (Only(v) is not int add || Node(add).OpType != "Add" || Other(add, v) is not string e || ScalarConstant(e) is not float eps) return false;
        if (Only(Node(add).Outputs[0]) is not int root || Node(root).OpType != "Sqrt") return false;
        (sqrt, epsilon) = (root, eps);
        return true;
    }

    /// <summary>
    /// After the normalized value n (output of <paramref name="normalized"/>): Mul by γ of <paramref name="width"/>
    /// elements, then optionally Add of β; <paramref name="affine"/> gets those steps. γ and β need not be constants
    /// (a variable's gradient flows through the fused operator's scale and bias).
    /// </summary>
    private bool TryAffine(int normalized, int width, out List<int> affine, out string gamma, out string? beta)
    {
        affine = []; gamma = ""; beta = null;
        string n = Node(normalized).Outputs[0];
        if (Only(n) is not int mul || Node(mul).OpType != "Mul" || Other(mul, n) is not string g || !IsRow(g, width) || !SameShape(mul, n)) return false;
        (affine, gamma) = ([mul], g);
        string scaled = Node(mul).Outputs[0];
        if (Only(scaled) is int add && Node(add).OpType == "Add" && Other(add, scaled) is string b && IsRow(b, width) && SameShape(add, scaled))
        {
            affine.Add(add);
            beta = b;
        }
        return true;
    }

    // ---- GELU (tanh): ½x · (1 + tanh(√(2/π)·(x + 0.044715·x³)))

    private void TryGeluTanh(int tanh)
    {
        // Backwards from tanh: u = Mul(inner, √(2/π)); inner = Add(x, Mul(Pow(x, 3), 0.044715)).
        string u = Node(tanh).Inputs[0];
        if (Producer(u) is not int scale || Node(scale).OpType != "Mul" || !HasScalar(scale, 0.7978845608f, out string inner) || Only(u) != tanh) return;
        if (Producer(inner) is not int add || Node(add).OpType != "Add" || Only(inner) != scale) return;
        int cubic = -1, cube = -1;
        string x = "";
        foreach (var (candidate, other) in new[] { (0, 1), (1, 0) })
        {
            string term = Node(add).Inputs[candidate];
            if (Producer(term) is int m && Node(m).OpType == "Mul" && HasScalar(m, 0.044715f, out string powered) && Only(term) == add
                && Producer(powered) is int c && Node(c).OpType == "Pow" && ScalarConstant(Node(c).Inputs[1]) == 3 && Node(c).Inputs[0] == Node(add).Inputs[other]
                && Only(powered) == m)
                (cubic, cube, x) = (m, c, Node(add).Inputs[other]);
        }
        if (cubic < 0) return;
        // Forwards: Add(tanh, 1), then ½x times it (Mul(Mul(x, ½), ·), or ½ applied last).
        if (Only(Node(tanh).Outputs[0]) is not int plusOne || Node(plusOne).OpType != "Add" || !HasScalar(plusOne, 1, out _)) return;
        if (!TryHalfXTimes(x, plusOne, out var tail)) return;
        ReplaceGelu([cube, cubic, add, scale, tanh, plusOne, .. tail], x, tanh: true);
    }

    // ---- GELU (erf): x · ½ · (1 + erf(x / √2))

    private void TryGeluErf(int erf)
    {
        string arg = Node(erf).Inputs[0];
        if (Producer(arg) is not int scale || Only(arg) != erf) return;
        string x;
        var s = Node(scale);
        if (s.OpType == "Div" && ScalarConstant(s.Inputs[1]) is float d && MathF.Abs(d - MathF.Sqrt(2)) < 1e-4f) x = s.Inputs[0];
        else if (s.OpType == "Mul" && HasScalar(scale, 0.70710678f, out string other)) x = other;
        else return;
        if (Only(Node(erf).Outputs[0]) is not int plusOne || Node(plusOne).OpType != "Add" || !HasScalar(plusOne, 1, out _)) return;
        if (!TryHalfXTimes(x, plusOne, out var tail)) return;
        ReplaceGelu([scale, erf, plusOne, .. tail], x, tanh: false);
    }

    /// <summary>The GELU chain as one operator: ONNX Gelu in an inference plan, <see cref="GeluWithSlope"/> (a second output, the slope) in a derivative plan.</summary>
    private void ReplaceGelu(List<int> chain, string x, bool tanh)
    {
        var attributes = tanh ? OperatorAttributes.Empty.Set("approximate", "tanh") : OperatorAttributes.Empty;
        if (!derivatives)
        {
            Replace(chain, "Gelu", "", 20, [x], attributes, node => new UnaryElementwise(node));
            return;
        }
        string y = Node(chain[^1]).Outputs[0];
        Replace(chain, "Gelu", "fisherkernels", 1, [x], attributes, node => new GeluWithSlope(node, tanh), [y, $"\0{y}:slope"]);
    }

    /// <summary>
    /// The product ½·x·t for t the output of <paramref name="factor"/>: Mul(Mul(x, ½), t), Mul(Mul(x, t), ½)
    /// or Mul(x, Mul(t, ½)); <paramref name="tail"/> gets the Mul steps (the last one ends the chain).
    /// </summary>
    private bool TryHalfXTimes(string x, int factor, out List<int> tail)
    {
        tail = [];
        string t = Node(factor).Outputs[0];
        if (Only(t) is not int mul || Node(mul).OpType != "Mul" || Other(mul, t) is not string partner) return false;
        if (partner == x)
        {
            // Mul(x, t) then Mul(·, ½)
            if (Only(Node(mul).Outputs[0]) is not int half || Node(half).OpType != "Mul" || !HasScalar(half, 0.5f, out _)) return false;
            tail = [mul, half];
            return true;
        }
        if (Producer(partner) is int halfX && Node(halfX).OpType == "Mul" && HasScalar(halfX, 0.5f, out string hx) && hx == x && Only(partner) == mul)
        {
            tail = [halfX, mul];
            return true;
        }
        return false;
    }

    // ---- Attention: MatMul(Q, Kᵀ) → scale (Div or Mul by a scalar) → mask (Where or Add) → Softmax → MatMul(·, V),
    //      with the Transposes that make Q, Kᵀ, V and the one after the output absorbed when only the chain reads them.

    private void TryAttention(int softmax)
    {
        var node = Node(softmax);
        string x = node.Inputs[0];
        int rank = InfoOf(x).Shape.Length;
        long axis = node.Attributes.GetInt("axis", node.Domain.Length == 0 && OpsetOf(softmax) >= 13 ? -1 : 1);
        if (!PackedGemm.IsSupported || node.Domain.Length != 0 || rank != 4 || (axis != -1 && axis != rank - 1)) return;
        if (Only(node.Outputs[0]) is not int pv || !Is(pv, "MatMul", node.Outputs[0], null)) return;
        List<int> chain = [softmax];
        string scaled = x, mask = "";
        var kind = FusedAttention.MaskKind.None;
        float fill = 0;
        bool keepWhere = true;
        if (Producer(x) is int masking && Node(masking).Domain.Length == 0)
        {
            var m = Node(masking);
            if (m.OpType == "Where" && ScalarConstant(m.Inputs[2]) is float f2 && Constant(m.Inputs[1]) is null)
                (scaled, mask, fill, kind, keepWhere) = (m.Inputs[1], m.Inputs[0], f2, FusedAttention.MaskKind.Select, true);
            else if (m.OpType == "Where" && ScalarConstant(m.Inputs[1]) is float f1 && Constant(m.Inputs[2]) is null)
                (scaled, mask, fill, kind, keepWhere) = (m.Inputs[2], m.Inputs[0], f1, FusedAttention.MaskKind.Select, false);
            else if (m.OpType == "Add" && m.Inputs.Length == 2)
            {
                // The scores side is the one made by the scaling or the MatMul; the other is the additive mask.
                int side = Array.FindIndex(m.Inputs, ComesFromMatMul);
                if (side >= 0 && SameShape(masking, m.Inputs[side]) && InfoOf(m.Inputs[1 - side]).Type == ElementType.Float32)
                    (scaled, mask, kind) = (m.Inputs[side], m.Inputs[1 - side], FusedAttention.MaskKind.Add);
            }
            if (kind != FusedAttention.MaskKind.None)
            {
                if (!SameShape(masking, scaled) || InfoOf(mask).Shape.Length > 4) return;
                chain.Add(masking);
            }
        }
        string scores = scaled;
        float scale = 1;
        if (Producer(scaled) is int scaling && Node(scaling).Domain.Length == 0 && Node(scaling).Inputs.Length == 2)
        {
            var sc = Node(scaling);
            if (sc.OpType == "Div" && ScalarConstant(sc.Inputs[1]) is float divisor) (scores, scale) = (sc.Inputs[0], 1 / divisor);
            else if (sc.OpType == "Mul" && ScalarConstant(sc.Inputs[1]) is float f) (scores, scale) = (sc.Inputs[0], f);
            else if (sc.OpType == "Mul" && ScalarConstant(sc.Inputs[0]) is float f0) (scores, scale) = (sc.Inputs[1], f0);
            if (scores != scaled) chain.Add(scaling);
        }
        if (Producer(scores) is not int qk || !Is(qk, "MatMul", Node(qk).Inputs[0], null)) return;
        chain.Add(qk);
        string q = Node(qk).Inputs[0], k = Node(qk).Inputs[1], v = Node(pv).Inputs[1];
        if (new[] { q, k, v }.Any(i => Constant(i) is not null || InfoOf(i).Shape.Length != 4) || q == k || k == v || q == v) return;
        var (qSource, qPerm) = Untransposed(q, qk, chain);
        var (kSource, kPerm) = Untransposed(k, qk, chain);
        var (vSource, vPerm) = Untransposed(v, pv, chain);
        int[] outPerm = [0, 1, 2, 3];
        chain.Add(pv);
        if (Only(Node(pv).Outputs[0]) is int after && Node(after).OpType == "Transpose" && Node(after).Domain.Length == 0)
        {
            outPerm = Permutation(after);
            chain.Add(after); // the chain's last step
        }
        string[] inputs = kind == FusedAttention.MaskKind.None ? [qSource, kSource, vSource] : [qSource, kSource, vSource, mask];
        int[][] permutations = [qPerm, kPerm, vPerm, outPerm];
        Replace(chain, "FusedAttention", "fisherkernels", 1, inputs, OperatorAttributes.Empty,
                fused => new FusedAttention(fused, permutations, scale, kind, fill, keepWhere));
    }

    /// <summary>Made by a MatMul, directly or through a Div or Mul by a scalar.</summary>
    private bool ComesFromMatMul(string value)
    {
        if (Producer(value) is not int p) return false;
        var node = Node(p);
        if (node.OpType == "MatMul") return true;
        return node.OpType is "Div" or "Mul" && node.Inputs.Length == 2 && node.Inputs.Any(i => ScalarConstant(i) is not null)
               && node.Inputs.Any(i => Producer(i) is int m && Node(m).OpType == "MatMul");
    }

    /// <summary>The tensor a rank-4 Transpose read only by <paramref name="reader"/> made from <paramref name="value"/> (the Transpose joins the chain), else the value itself.</summary>
    private (string Source, int[] Permutation) Untransposed(string value, int reader, List<int> chain)
    {
        if (Producer(value) is int t && Node(t).OpType == "Transpose" && Node(t).Domain.Length == 0 && Only(value) == reader
            && InfoOf(Node(t).Inputs[0]).Shape.Length == 4)
        {
            chain.Add(t);
            return (Node(t).Inputs[0], Permutation(t));
        }
        return (value, [0, 1, 2, 3]);
    }

    /// <summary>A rank-4 Transpose's perm (default: reversed axes).</summary>
    private int[] Permutation(int transpose) =>
        Node(transpose).Attributes.GetInts("perm") is { } perm ? Array.ConvertAll(perm, p => (int)(p < 0 ? p + 4 : p)) : [3, 2, 1, 0];

    private int OpsetOf(int step) => steps[step].Op.Node.Opset;

    // ---- MatMul by a constant weight (+ constant bias)

    private void TryPackedMatMul(int matMul)
    {
        var node = Node(matMul);
        if (Constant(node.Inputs[0]) is not null || Constant(node.Inputs[1]) is not NdArray<float> weight || weight.Rank != 2) return;
        if (InfoOf(node.Inputs[0]).Shape.Length < 2) return;
        int n = weight.Shape[1];
        string y = node.Outputs[0];
        List<int> chain = [matMul];
        string[] inputs = [node.Inputs[0], node.Inputs[1]];
        NdArray<float>? bias = null;
        if (Only(y) is int add && Node(add).OpType == "Add" && Other(add, y) is string b && IsVector(b, n) && SameShape(add, y))
        {
            chain.Add(add);
            inputs = [.. inputs, b];
            bias = (NdArray<float>)Constant(b)!;
            y = Node(add).Outputs[0];
        }
        var activation = Activation.None;
        if (Only(y) is int gelu && Node(gelu).OpType == "Gelu" && Node(gelu).Domain.Length == 0)
        {
            chain.Add(gelu);
            activation = Node(gelu).Attributes.GetString("approximate", "none") == "tanh" ? Activation.GeluTanh : Activation.GeluErf;
        }
        Replace(chain, "PackedMatMul", "fisherkernels", 1, inputs, OperatorAttributes.Empty, fused => new PackedMatMul(fused, weight, bias, activation));
    }

    // ---- helpers

    private Node Node(int step) => steps[step].Node;

    private TensorInfo InfoOf(string value) => plan.Values[plan.Id(value)].Info;

    private NdArray? Constant(string value) => plan.Values[plan.Id(value)] is { IsConstant: true } v ? v.Array : null;

    /// <summary>The value of a float constant with one element, else null.</summary>
    private float? ScalarConstant(string value) => Constant(value) is NdArray<float> { Length: 1 } c ? c.Data[0] : null;

    /// <summary>A float value, known or not, of <paramref name="width"/> elements laid along the last axis ([width] or [1, …, width]).</summary>
    private bool IsRow(string value, int width) =>
        InfoOf(value) is { Type: ElementType.Float32 } info && info.Length == width && (info.Shape.Length == 0 ? width == 1 : info.Shape[^1] == width);

    /// <summary>A float constant laid out as <see cref="IsRow"/> says.</summary>
    private bool IsVector(string value, int width) => IsRow(value, width) && Constant(value) is NdArray<float>;

    /// <summary>The step's output has the shape of its input <paramref name="value"/> (the other operand only broadcasts).</summary>
    private bool SameShape(int step, string value) => InfoOf(Node(step).Outputs[0]).Shape.AsSpan().SequenceEqual(InfoOf(value).Shape);

    /// <summary>The single step that reads <paramref name="value"/>, when the value is needed nowhere else.</summary>
    private int? Only(string value) => Consumers(value, out var readers) && readers.Count == 1 ? readers[0] : null;

    /// <summary>The live steps reading an intermediate value; false for graph outputs (they must stay).</summary>
    private bool Consumers(string value, out List<int> readers)
    {
        readers = consumers.TryGetValue(value, out var list) ? list.Where(r => !removed[r]).ToList() : [];
        return !graphOutputs.Contains(value) && readers.Count > 0;
    }

    private int? Producer(string value) => producers.TryGetValue(value, out int s) && !removed[s] ? s : null;

    /// <summary>The other input of a two-input step that reads <paramref name="value"/>.</summary>
    private string? Other(int step, string value)
    {
        var inputs = Node(step).Inputs;
        if (inputs.Length != 2) return null;
        return inputs[0] == value ? inputs[1] : inputs[1] == value ? inputs[0] : null;
    }

    /// <summary>A Mul or Add step with a scalar constant operand equal to <paramref name="expected"/> (to float rounding); <paramref name="other"/> is the other input.</summary>
    private bool HasScalar(int step, float expected, out string other)
    {
        other = "";
        var inputs = Node(step).Inputs;
        if (inputs.Length != 2) return false;
        for (int i = 0; i < 2; i++)
            if (ScalarConstant(inputs[i]) is float v && MathF.Abs(v - expected) <= 1e-6f * MathF.Max(1, MathF.Abs(expected)))
            {
                other = inputs[1 - i];
                return Constant(other) is null;
            }
        return false;
    }

    private bool Is(int step, string opType, string first, string? second) =>
        Node(step).OpType == opType && Node(step).Domain.Length == 0 && Node(step).Inputs.Length == 2
        && Node(step).Inputs[0] == first && (second is null || Node(step).Inputs[1] == second);

    private bool IsCommutative(int step, string opType, string a, string b) => Is(step, opType, a, b) || Is(step, opType, b, a);

    /// <summary>Pow(v, 2) or Mul(v, v).</summary>
    private bool IsSquare(int step, string v) =>
        (Is(step, "Pow", v, null) && ScalarConstant(Node(step).Inputs[1]) == 2) || Is(step, "Mul", v, v);

    /// <summary>A ReduceMean over the last axis alone, keeping it.</summary>
    private bool ReducesLastAxis(int step)
    {
        var node = Node(step);
        int rank = InfoOf(node.Inputs[0]).Shape.Length;
        if (rank == 0 || node.Attributes.GetInt("keepdims", 1) != 1) return false;
        long[]? axes = node.Inputs.Length > 1 && node.Inputs[1].Length > 0
            ? Constant(node.Inputs[1]) is NdArray<long> a ? a.Data : null
            : node.Attributes.GetInts("axes");
        return axes is [long axis] && (axis == -1 || axis == rank - 1);
    }

    /// <summary>Replaces <paramref name="chain"/> (its last step ends it) with one fused step, if its intermediates stay inside it.</summary>
    /// <param name="outputs">The fused step's outputs when they are not the last node's: new ones (after those) become values of the plan.</param>
    private void Replace(IReadOnlyList<int> chain, string opType, string domain, int opset, string[] inputs, OperatorAttributes attributes,
                         Func<OperatorNode, Operator> create, string[]? outputs = null)
    {
        var members = chain.ToHashSet();
        if (members.Count != chain.Count || members.Any(s => removed[s])) return;
        int last = chain[^1];
        foreach (int s in chain)
            foreach (string output in Node(s).Outputs)
                if (s != last && (graphOutputs.Contains(output) || (consumers.TryGetValue(output, out var readers) && readers.Any(r => !removed[r] && !members.Contains(r)))))
                    return;
        var lastNode = Node(last);
        outputs ??= lastNode.Outputs;
        foreach (var output in outputs.Skip(lastNode.Outputs.Length)) plan.AddFusedValue(output, lastNode.Outputs[0]);
        var node = new Node { Name = lastNode.Name, OpType = opType, Domain = domain, Inputs = inputs, Outputs = outputs, Attributes = attributes };
        var op = create(new OperatorNode($"{lastNode.Name} (fused)", opType, domain, opset, attributes, inputs.Length, outputs.Length));
        foreach (int s in chain) removed[s] = s != last;
        steps[last] = (node, op);
        foreach (var input in inputs)
        {
            if (!consumers.TryGetValue(input, out var list)) consumers[input] = list = [];
            if (!list.Contains(last)) list.Add(last);
        }
    }
}
