//! Generates the gRPC code from `proto/cluster.proto` with the vendored protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    tonic_prost_build::configure()
        // The CLI prints API objects as JSON (`--format json`).
        .type_attribute(".cluster.v1", "#[derive(serde::Serialize, serde::Deserialize)]")
        // Only create and update answers carry warnings: keep them out of other JSON.
        .field_attribute(
            ".cluster.v1.Service.warnings",
            "#[serde(default, skip_serializing_if = \"Vec::is_empty\")]",
        )
        .compile_protos(&["proto/cluster.proto"], &["proto"])?;
    Ok(())
}
