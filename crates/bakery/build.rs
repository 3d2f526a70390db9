//! How the `bakery` binary is linked.

fn main() {
    // Relative relocations packed (RELR): the table the loader walks at every
    // process's start shrinks from 1.3 MB (55,000 entries of 24 bytes, each page of
    // it read into every process) to a few KB. glibc 2.36 and binutils 2.38 know it;
    // an older linker ignores the option with a warning.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
