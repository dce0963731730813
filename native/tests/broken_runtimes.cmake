# Two copies of libfisherkernels.so whose runtime cannot start (see CMakeLists.txt):
# LONELY holds the library alone; NO_FRAMEWORK holds it with its managed files, but their
# runtimeconfig asks for a .NET version that does not exist.
file(REMOVE_RECURSE "${LONELY}" "${NO_FRAMEWORK}")
file(MAKE_DIRECTORY "${LONELY}")
file(COPY "${LIBRARY}" DESTINATION "${LONELY}")
file(COPY "${MANAGED}/" DESTINATION "${NO_FRAMEWORK}" PATTERN "*.pdb" EXCLUDE)
set(config "${NO_FRAMEWORK}/FisherKernels.Native.runtimeconfig.json")
file(READ "${config}" text)
string(REGEX REPLACE "\"version\": *\"[0-9.]+\"" "\"version\": \"99.0.0\"" text "${text}")
file(WRITE "${config}" "${text}")
