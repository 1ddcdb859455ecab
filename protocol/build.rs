//! Generates the CRI and admin bindings at build time with the protoc that
//! protoc-bin-vendored ships, so nothing has to be installed by hand (only
//! with the `grpc` feature: the shim contract needs no generated code).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
        println!("cargo:rerun-if-changed=proto");
        tonic_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_protos(&["proto/cri/api.proto"], &["proto/cri"])?;
        tonic_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_protos(&["proto/admin/admin.proto"], &["proto/admin"])?;
    }
    Ok(())
}
