//! Networks, one per file, each opening with the paper it implements:
//! [`resnet`] is the rotation (+ linear head) feature extractor of the
//! pre-training stage; [`biggan`] the GAN (with its [`layers`]).
pub mod biggan;
pub mod layers;
pub mod resnet;
pub mod state_dict;
