// libnavigen.so per ABI comes from ../build-rust.sh (cargo-ndk) into build/rust-jniLibs/<abi>/;
// the JNI shim is built here by CMake against it; the Kotlin sources are bindings/kotlin's, unchanged.
// libnavigen.so is an IMPORTED library of that CMake project, which the Android Gradle plugin (4.0 and
// later) packages by itself: listing its folder under jniLibs as well would put it in the AAR twice.
// llama.cpp inside it is C++ on the NDK's shared STL, which ANDROID_STL=c++_shared packages.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

val rustJniLibs = layout.buildDirectory.dir("rust-jniLibs").get().asFile
val abis = listOf("arm64-v8a", "x86_64")

android {
    namespace = "dev.navigen"
    compileSdk = 35
    ndkVersion = "27.2.12479018"

    defaultConfig {
        minSdk = 24
        ndk { abiFilters += abis }
        externalNativeBuild {
            cmake {
                arguments += "-DNAVIGEN_JNILIBS=${rustJniLibs.absolutePath}"
                arguments += "-DANDROID_STL=c++_shared"
            }
        }
        consumerProguardFiles("consumer-rules.pro")
    }
    externalNativeBuild {
        cmake { path = file("src/main/cpp/CMakeLists.txt") }
    }
    sourceSets["main"].kotlin.srcDir("../../bindings/kotlin/src/main/kotlin")
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }
    kotlinOptions { jvmTarget = "1.8" }
}

dependencies {
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
}

// libnavigen for every ABI before anything is packaged.
val cargoNdk by tasks.registering(Exec::class) {
    workingDir = rootDir
    commandLine("bash", "build-rust.sh", "--out", rustJniLibs.absolutePath, *abis.flatMap { listOf("--abi", it) }.toTypedArray())
}
tasks.named("preBuild") { dependsOn(cargoNdk) }
