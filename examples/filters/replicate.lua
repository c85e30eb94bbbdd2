-- replicate.lua: a second copy of the encoded bytes in another directory.
--
-- encode: writes the bytes it is given to DIR/objects/XX/DIGEST (objects)
-- or DIR/blocks/LAYER/BLOCK (volume blocks) and passes them on unchanged.
-- decode: passes the bytes on unchanged.
-- recover: returns the copy (or nil). The chain calls it when a stage
-- decoded after this one (earlier in the chain: checksum, encrypt,
-- compress) reports damage, and resumes decoding from the copy.
--
-- params: dir (absolute path; put it on another disk to survive losing one)

local dir = params.dir
assert(type(dir) == "string", "replicate.lua needs params.dir (an absolute path)")

function encode(bytes, ctx)
  return fk.replica_write(dir, bytes)
end

function decode(bytes, ctx)
  return bytes
end

function recover(ctx)
  return fk.replica_read(dir)
end
