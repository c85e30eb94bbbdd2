-- compress.lua: zstd compression.
--
-- encode: the bytes become one standard zstd frame (with the content size
-- and a content checksum), so `zstd -d` reads a stored object directly.
-- decode: decompresses; a corrupt frame is damage (FK0905).
--
-- params: level (integer, -7..22, default 3)

local level = params.level or 3

function encode(bytes, ctx)
  return fk.zstd_compress(bytes, level)
end

function decode(bytes, ctx)
  return fk.zstd_decompress(bytes)
end
