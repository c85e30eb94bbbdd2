//! CRC-32C (Castagnoli), the checksum of every layer record and block.
//!
//! Computed by the `crc32c` crate (SSE 4.2 / ARMv8 CRC instructions when
//! the CPU has them, about 10–20 GB/s; software otherwise). It composes:
//! `crc32c(a ++ b) == crc32c_append(crc32c(a), b)`, which the commit records
//! use to chain the checksums of a batch. The table-driven implementation
//! below is kept for the tests, as an independent check of the crate.

/// The CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

/// The CRC-32C of the bytes whose CRC-32C is `crc`, followed by `data`.
pub(crate) fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    ::crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod software {
    const POLY: u32 = 0x82F6_3B78; // reflected Castagnoli polynomial

    static TABLES: [[u32; 256]; 8] = make_tables();

    const fn make_tables() -> [[u32; 256]; 8] {
        let mut t = [[0u32; 256]; 8];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
                k += 1;
            }
            t[0][i] = c;
            i += 1;
        }
        let mut i = 0;
        while i < 256 {
            let mut j = 1;
            while j < 8 {
                let prev = t[j - 1][i];
                t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
                j += 1;
            }
            i += 1;
        }
        t
    }

    /// The CRC-32C of the bytes whose CRC-32C is `crc`, followed by `data`.
    pub(super) fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
        let t = &TABLES;
        let mut c = !crc;
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
            let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            c = t[7][(lo & 0xff) as usize]
                ^ t[6][((lo >> 8) & 0xff) as usize]
                ^ t[5][((lo >> 16) & 0xff) as usize]
                ^ t[4][(lo >> 24) as usize]
                ^ t[3][(hi & 0xff) as usize]
                ^ t[2][((hi >> 8) & 0xff) as usize]
                ^ t[1][((hi >> 16) & 0xff) as usize]
                ^ t[0][(hi >> 24) as usize];
        }
        for &b in chunks.remainder() {
            c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        !c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The check value of CRC-32C, and the iSCSI test vectors of RFC 3720 B.4.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn the_crate_agrees_with_the_table_implementation() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in [0usize, 1, 3, 7, 8, 9, 63, 64, 65, 4095, 4096, 4097, 100_000] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for seed in [0u32, 1, 0xdead_beef] {
                assert_eq!(
                    crc32c_append(seed, &data),
                    software::crc32c_append(seed, &data),
                    "len {len} seed {seed:#x}"
                );
            }
        }
    }

    #[test]
    fn appends_compose() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data), "cut {cut}");
        }
    }
}
