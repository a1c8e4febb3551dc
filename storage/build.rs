//! Compiles `src/insert_hint.cc` against the headers of the RocksDB that librocksdb-sys builds.

fn main() {
    let rocksdb = std::env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR")
        .expect("librocksdb-sys names its source directory to the crates that depend on it");
    cc::Build::new()
        .cpp(true)
        .file("src/insert_hint.cc")
        .include(format!("{rocksdb}/rocksdb/include"))
        .flag("-std=c++20")
        .flag_if_supported("-Wno-unused-parameter")
        .compile("raftflow_insert_hint");
    println!("cargo:rerun-if-changed=src/insert_hint.cc");
}
