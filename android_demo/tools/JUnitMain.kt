// Runs the JVM tests named on the command line with JUnit 4's JUnitCore (used by jvm-test.sh).
import org.junit.internal.TextListener
import org.junit.runner.JUnitCore
import kotlin.system.exitProcess

fun main(args: Array<String>) {
    val core = JUnitCore()
    core.addListener(TextListener(System.out))
    val result = core.run(*args.map { Class.forName(it) }.toTypedArray())
    val failed = result.failureCount
    val passed = result.runCount - failed - result.ignoreCount - result.assumptionFailureCount
    println("$passed passed, $failed failed")
    exitProcess(if (result.wasSuccessful() && result.runCount > 0) 0 else 1)
}
