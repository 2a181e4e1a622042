// swift-tools-version:5.9
// navigen for Swift: Engine and History over navigen's C ABI (include/navigen.h).
//
// Linux and macOS: the C module links libnavigen from the library path
//   swift build -Xlinker -L<dir of libnavigen>   (scripts/swift-check.sh runs the tests on Linux)
// iOS: ios/build-xcframework.sh builds navigen.xcframework (libnavigen.a per device and simulator
// with the header and a module map) into Frameworks/ (a local binary target must lie inside the
// package); with it present, this package links it as a binary target instead.
import Foundation
import PackageDescription

let xcframework = "Frameworks/navigen.xcframework"
let haveXCFramework = FileManager.default.fileExists(
    atPath: URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(xcframework).path)

var targets: [Target] = [
    .target(
        name: "Navigen",
        dependencies: ["CNavigen"],
        // What llama.cpp needs on Apple platforms (C++, its Metal backend and BLAS).
        linkerSettings: [
            .linkedLibrary("c++", .when(platforms: [.iOS, .macOS])),
            .linkedFramework("Metal", .when(platforms: [.iOS, .macOS])),
            .linkedFramework("MetalKit", .when(platforms: [.iOS, .macOS])),
            .linkedFramework("Accelerate", .when(platforms: [.iOS, .macOS])),
        ]),
    .testTarget(name: "NavigenTests", dependencies: ["Navigen"]),
]
#if os(Linux)
targets.append(.systemLibrary(name: "CNavigen", path: "Sources/CNavigen"))
#else
if haveXCFramework {
    targets.append(.binaryTarget(name: "CNavigen", path: xcframework))
} else {
    targets.append(.systemLibrary(name: "CNavigen", path: "Sources/CNavigen"))
}
#endif

let package = Package(
    name: "Navigen",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [.library(name: "Navigen", targets: ["Navigen"])],
    targets: targets
)
