// swift-tools-version:5.9
// pith for Swift (iOS/macOS): a module map over targets/ffi/include/pith.h and a thin Swift
// API. Link libpith_ffi (cargo build --release -p pith-ffi --target aarch64-apple-ios, or an
// XCFramework of it); see README.md. Not built here: no Swift toolchain is reachable.
import PackageDescription

let package = Package(
    name: "Pith",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [.library(name: "Pith", targets: ["Pith"])],
    targets: [
        .systemLibrary(name: "CPith", path: "Sources/CPith"),
        .target(name: "Pith", dependencies: ["CPith"], path: "Sources/Pith"),
    ]
)
