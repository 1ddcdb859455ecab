//! On x86-64 and AArch64 berth-pause starts at its own `_start`: no C
//! start-up files are linked.
fn main() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch == "x86_64" || arch == "aarch64" {
        println!("cargo:rustc-link-arg-bins=-nostartfiles");
    }
}
