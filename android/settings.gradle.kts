// The navigen Android library (AAR): the Kotlin binding (bindings/kotlin), its JNI shim and libnavigen
// per ABI. See README.md for the steps.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "navigen-android"
include(":navigen")
