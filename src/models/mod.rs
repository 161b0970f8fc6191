//! Networks: BigGAN (generator, projection discriminator) and its layers.
pub mod biggan;
pub mod layers;
