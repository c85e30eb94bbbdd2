-- checksum.lua: a CRC-32C trailer.
--
-- encode: the bytes, then their CRC-32C (4 bytes, little-endian).
-- decode: checks and strips it; a mismatch is damage (FK0905), never
-- silently bad data. A replicate stage after this one in the chain then
-- serves the good copy.

function encode(bytes, ctx)
  return fk.checksum_seal(bytes)
end

function decode(bytes, ctx)
  return fk.checksum_open(bytes)
end
