//! Embeds the dashboard: every file directly in the repository's `ui/` directory (not its
//! subdirectories such as `ui/tests/` or `node_modules`) becomes an entry of
//! `$OUT_DIR/ui_files.rs`, a table of (URL path, content type, bytes). Without `ui/` the table
//! is empty and central answers `/` with a 404 that says so.

use std::{env, fmt::Write as _, fs, path::PathBuf};

fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ui = manifest.join("../../ui");
    println!("cargo::rerun-if-changed={}", ui.display());

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(entries) = fs::read_dir(&ui) {
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                println!("cargo::warning=ui/: skipping a file whose name is not UTF-8");
                continue;
            };
            if !file_type.is_file() || name.starts_with('.') {
                continue;
            }
            let path = fs::canonicalize(entry.path()).expect("ui file path");
            files.push((name, path));
        }
    }
    files.sort();

    let mut out = String::from("pub static FILES: &[(&str, &str, &[u8])] = &[\n");
    for (name, path) in &files {
        let path = path.to_str().expect("UTF-8 path to ui/");
        writeln!(
            out,
            "    ({:?}, {:?}, include_bytes!({:?})),",
            format!("/{name}"),
            content_type(name),
            path
        )
        .expect("write to String");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("ui_files.rs");
    fs::write(dest, out).expect("write ui_files.rs");
}
