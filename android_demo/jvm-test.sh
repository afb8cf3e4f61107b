#!/usr/bin/env bash
# JVM tests of the app's pure-Kotlin core (tokenizer, generation loop, manifest), without the
# Android SDK: kotlinc compiles core + tests into build/, JUnit 4 runs them.
#   ./jvm-test.sh [DIR]   DIR holds tokenizer.json (an ONNX export folder, say); default: the
#                         model cache $EDGE_C2I_HOME/models/smollm2-135m (~/.cache/edge-c2i/...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$HERE/build"
JAVA_LIBS=/usr/share/java

if ! command -v kotlinc >/dev/null || [ ! -f "$JAVA_LIBS/junit4.jar" ]; then
    echo "jvm-test: installing kotlin and junit4 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq kotlin junit4 >/dev/null
fi
KOTLIN_LIB="$(dirname "$(readlink -f "$(command -v kotlinc)")")/../lib"

# tokenizer.json is too large to commit: copy it into build/ at test time
SRC="${1:-${EDGE_C2I_HOME:-${HOME:-/root}/.cache/edge-c2i}/models/smollm2-135m}"
if [ ! -f "$SRC/tokenizer.json" ]; then
    echo "jvm-test: no tokenizer.json in $SRC" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
rm -rf "$BUILD/classes" "$BUILD/tokenizer" "$BUILD/kotlinc.log"
mkdir -p "$BUILD/classes" "$BUILD/tokenizer"
cp "$SRC/tokenizer.json" "$BUILD/tokenizer/"

CP="$JAVA_LIBS/junit4.jar:$JAVA_LIBS/hamcrest-core.jar"
echo "jvm-test: compiling the core and its tests with kotlinc"
if ! kotlinc -nowarn -jvm-target 1.8 -cp "$CP" -d "$BUILD/classes" \
    "$HERE/app/src/main/java/com/edgec2i/demo/core" "$HERE/app/src/test/java" "$HERE/tools/JUnitMain.kt" \
    >"$BUILD/kotlinc.log" 2>&1; then
    grep -v 'Xverify:none' "$BUILD/kotlinc.log" >&2
    echo "jvm-test: compilation failed"
    echo "0 passed, 1 failed"
    exit 1
fi

TESTS=$(cd "$BUILD/classes" && find . -name '*Test.class' ! -name '*$*' | sed 's|^\./||; s|\.class$||; s|/|.|g' | sort)
java -Dedgec2i.tokenizerDir="$BUILD/tokenizer" \
    -cp "$BUILD/classes:$HERE/app/src/test/resources:$CP:$KOTLIN_LIB/kotlin-stdlib.jar" \
    JUnitMainKt $TESTS
