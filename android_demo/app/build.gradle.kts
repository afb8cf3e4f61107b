import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "com.edgec2i.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "com.edgec2i.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    // The model is copied out of the APK at first start: keep it uncompressed (openFd needs that).
    androidResources {
        noCompress += listOf("ort", "onnx")
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    // Keep in step with the Python onnxruntime that wrote model.ort (see README.md).
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.32.0")
    testImplementation("junit:junit:4.13.2")
}

// The JVM tests read tokenizer.json from android_demo/build/tokenizer (jvm-test.sh copies it
// there), else from the model cache $EDGE_C2I_HOME/models/smollm2-135m.
tasks.withType<Test>().configureEach {
    systemProperty("edgec2i.tokenizerDir", rootProject.layout.buildDirectory.dir("tokenizer").get().asFile.path)
}
