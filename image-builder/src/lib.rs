//! `kubedna-image` builds the KubeDNA node OS image and the NoCloud seeds that start a node.
//! The binary is a thin shell over this library: [`build::build`] assembles a root filesystem
//! from a distribution base ([`base`]), pinned and verified Kubernetes artifacts
//! ([`artifacts`]) and our layer (agent, units, configuration), and writes it out as a
//! reproducible tarball, a UEFI disk and PXE files ([`disk`]); [`seed`] renders cloud-init
//! seeds from one cluster description. External tools run through [`cmd`]. Nothing here ever
//! mounts a filesystem.

pub mod artifacts;
pub mod base;
pub mod build;
pub mod cmd;
pub mod disk;
pub mod install;
pub mod oci;
pub mod seed;
pub mod seed_doctor;
pub mod seed_pxe;
