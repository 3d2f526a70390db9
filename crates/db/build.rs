//! Embeds the migrations: `$OUT_DIR/migrations.rs` lists each directory's `.sql`
//! files, in order, as `(file name, text)` (see `src/migrations.rs`).

use std::fmt::Write;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut out = String::new();
    for (name, dir) in [
        ("SQLITE", "sqlite"),
        ("POSTGRES", "postgres"),
        ("MARIADB", "mariadb"),
    ] {
        let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("migrations/{dir}: {e}"))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|file| file.ends_with(".sql"))
            .collect();
        files.sort();
        writeln!(out, "const {name}: Files = &[").expect("a String takes writes");
        for file in files {
            let path = root.join(dir).join(&file);
            writeln!(out, "    ({file:?}, include_str!({:?})),", path.display())
                .expect("a String takes writes");
        }
        writeln!(out, "];").expect("a String takes writes");
    }
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    std::fs::write(target, out).expect("OUT_DIR is writable");
}
