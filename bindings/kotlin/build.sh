#!/usr/bin/env bash
# Builds the Kotlin binding for a desktop JVM: the JNI shim against the host JDK and libnavigen, and
# the classes as a jar. With --tests, also the JUnit 4 tests (src/test) as a second jar.
#
#   bindings/kotlin/build.sh --lib DIR --kotlin KOTLIN_HOME --out DIR [--tests JUNIT_JARS]
#
#   --lib     the folder holding libnavigen.so (cargo build -p navigen-ffi: target/<profile>)
#   --kotlin  a Kotlin compiler distribution (bin/, lib/): the npm package kotlin-compiler, which
#             `navigen-train fetch kotlin-compiler` puts in the cache, or an unpacked kotlinc zip
#   --out     receives libnavigen_jni.so, navigen-kotlin.jar (and navigen-kotlin-tests.jar)
#   --tests   the JUnit 4 jars (colon-separated), e.g. /usr/share/java/junit4.jar
#
# On Android the same sources and shim are built by android/ (Gradle, the NDK); see android/README.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
lib="" kotlin="" out="" tests=""
while [ $# -gt 0 ]; do
  case "$1" in
  --lib) lib="$2"; shift 2 ;;
  --kotlin) kotlin="$2"; shift 2 ;;
  --out) out="$2"; shift 2 ;;
  --tests) tests="$2"; shift 2 ;;
  -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$lib" ] && [ -n "$kotlin" ] && [ -n "$out" ] || { sed -n '2,15p' "$0" >&2; exit 2; }
[ -e "$lib/libnavigen.so" ] || { echo "build.sh: no libnavigen.so in $lib" >&2; exit 1; }
mkdir -p "$out"

# The host JDK: where javac lives, for jni.h.
java_home="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}"
[ -e "$java_home/include/jni.h" ] || { echo "build.sh: no jni.h under $java_home (install a JDK)" >&2; exit 1; }
os=linux
[ "$(uname -s)" = Darwin ] && os=darwin

# The shim: warnings are errors, so a JNI signature typo fails here and not in an app.
${CC:-cc} -shared -fPIC -O2 -std=c99 -Wall -Wextra -Werror \
  -I"$java_home/include" -I"$java_home/include/$os" -I"$root/include" \
  "$here/jni/navigen_jni.c" -L"$lib" -lnavigen -Wl,-rpath,"$(cd "$lib" && pwd)" \
  -o "$out/libnavigen_jni.so"

# kotlinc as its launcher script runs it, without needing the script's execute bit.
kotlinc() {
  java -Xss8m -Dkotlin.home="$kotlin" -cp "$kotlin/lib/kotlin-preloader.jar" \
    org.jetbrains.kotlin.preloading.Preloader -cp "$kotlin/lib/kotlin-compiler.jar" \
    org.jetbrains.kotlin.cli.jvm.K2JVMCompiler "$@"
}
coroutines="$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
kotlinc -Werror -jvm-target 1.8 -cp "$coroutines" -d "$out/navigen-kotlin.jar" "$here/src/main/kotlin"
if [ -n "$tests" ]; then
  # The tests read internal helpers (Json): -Xfriend-paths gives them the module's internals.
  kotlinc -Werror -jvm-target 1.8 -cp "$coroutines:$out/navigen-kotlin.jar:$tests" \
    -Xfriend-paths="$out/navigen-kotlin.jar" -d "$out/navigen-kotlin-tests.jar" "$here/src/test/kotlin"
fi
