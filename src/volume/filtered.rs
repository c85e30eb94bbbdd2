//! Filtered volumes (`docs/volume-format.md`, "Filtered volumes"): a
//! volume created with a filter chain stores every block as what the
//! chain's `encode` made of it, and decodes it on every read.
//!
//! The chain is built once per opened volume ([`crate::filter::Chain`]: one
//! Lua state per thread that uses it). Each call names the block with
//! [`Ctx::Block`]: the volume, the layer the record is in, the virtual
//! block and the plain size (4096).
//!
//! What a read trusts, in order:
//! 1. the record's CRC-32C of the stored payload (as for unfiltered blocks);
//! 2. the chain's own checks (a checksum trailer, zstd's frame checksum,
//!    the AEAD tag), which raise damage (FK0905) or a wrong key (FK0906);
//! 3. a replica, if the chain has a stage with `recover`: the chain serves
//!    it on damage ([`Chain::decode_report`]); nothing is rewritten.
//!
//! A payload whose CRC fails but which the chain decodes without noticing
//! (a chain without checks), or fails with another error than damage (a
//! flipped key ID reads as another key), is not served: the chain is asked
//! for a replica ([`Chain::recover`]), and without one the read fails with
//! FK0710. No read ever returns bytes that no check vouched for.

use super::format::{BS, MAX_STORED};
use super::{Result, VolumeError};
use crate::filter::{Chain, Ctx};

/// What a filter call on block `block` of layer `layer` is about.
fn ctx(volume: &str, layer: u64, block: u64) -> Ctx {
    Ctx::Block {
        volume: volume.to_string(),
        layer,
        block,
        size: BS,
    }
}

/// Encodes one plain block for layer `layer`; the result fits a record.
pub(crate) fn encode(
    chain: &Chain,
    volume: &str,
    layer: u64,
    block: u64,
    plain: &[u8],
) -> Result<Vec<u8>> {
    let stored = chain.encode(plain.to_vec(), &ctx(volume, layer, block))?;
    if stored.len() as u64 > MAX_STORED {
        return Err(VolumeError::FilterOutput {
            volume: volume.to_string(),
            block,
            why: format!(
                "the filter chain encoded it as {} bytes, more than a record holds ({MAX_STORED})",
                stored.len()
            ),
        });
    }
    Ok(stored)
}

/// Decodes the stored payload of block `block` (in layer `layer`, whose
/// record gives its CRC `crc`) into `out` (one block).
pub(crate) fn decode(
    chain: &Chain,
    volume: &str,
    layer: u64,
    block: u64,
    stored: &[u8],
    crc: u32,
    out: &mut [u8],
) -> Result<()> {
    let intact = super::crc::crc32c(stored) == crc;
    let ctx = ctx(volume, layer, block);
    let corrupt = || VolumeError::Corrupt {
        volume: volume.to_string(),
        block,
        layer,
    };
    let d = match chain.decode_report(stored.to_vec(), &ctx) {
        Ok(d) if intact || d.recovered_by.is_some() => d,
        Err(e) if intact || e.is_damage() => return Err(e.into()),
        // The record's CRC says damaged and the chain did not say so (it
        // decoded, or blamed something else: a flipped key ID looks like
        // another key): only a replica can be trusted.
        other => {
            if let Err(e) = other {
                tracing::debug!("{}: {e}", ctx.describe());
            }
            chain.recover(&ctx).map_err(|e| {
                tracing::debug!("{}: no replica: {e}", ctx.describe());
                corrupt()
            })?
        }
    };
    if let Some(stage) = &d.recovered_by {
        tracing::warn!(
            "{}: the stored block is damaged; served the replica of filter {stage:?}",
            ctx.describe()
        );
    }
    if d.data.len() != out.len() {
        return Err(VolumeError::FilterOutput {
            volume: volume.to_string(),
            block,
            why: format!(
                "the filter chain decoded it as {} bytes, not {}",
                d.data.len(),
                out.len()
            ),
        });
    }
    out.copy_from_slice(&d.data);
    Ok(())
}
