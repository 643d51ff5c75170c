//! Generated gRPC types and services (`camvault.v1`).
#![allow(missing_docs, clippy::all, reason = "generated code")]

tonic::include_proto!("camvault.v1");

/// The encoded descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("camvault_descriptor");
