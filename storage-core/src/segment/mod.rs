//! Segment files: one camera's frames for a stretch of time, encrypted record by record.
//! Layout in FORMAT.md "Segment file".

pub(crate) mod format;
pub(crate) mod reader;
pub(crate) mod writer;

pub use format::{Codec, CODEC_CONFIG_BYTES_MAX, FRAME_BYTES_MAX};
