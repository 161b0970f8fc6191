//! Networks, one per file, each opening with the paper it implements:
//! [`resnet`] is the rotation (+ linear head) feature extractor of the
//! pre-training stage.
pub mod resnet;
