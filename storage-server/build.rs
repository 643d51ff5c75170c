//! Compiles the gRPC API from `proto/` with protox (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/camvault.proto");
    let fds = protox::compile(["proto/camvault.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("camvault_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Video payloads as `Bytes`: decoded without a copy out of the receive buffer, and sent
    // as slices of what the store or the muxer already holds.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".camvault.v1.Frame.payload")
        .bytes(".camvault.v1.ExportChunk.mp4")
        // Bad protobuf is INVALID_ARGUMENT (`src/codec.rs`). An absolute path: the tests
        // include the generated code in crates of their own.
        .codec_path("::camvault_server::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
