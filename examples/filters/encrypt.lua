-- encrypt.lua: authenticated encryption (XChaCha20-Poly1305).
--
-- encode: "FKE1" | key ID (8 bytes) | random nonce (24) | ciphertext | tag (16).
-- The ciphertext is bound to the object digest or block number (ctx), so
-- it cannot be moved to another object or block unnoticed.
-- decode: a payload written with another key is FK0906; one that fails
-- authentication (damaged or moved) is damage (FK0905). Never garbage.
--
-- params: key_file (absolute path of a file holding 32 bytes or 64 hex
-- digits) or key_env (name of an environment variable holding 64 hex
-- digits). The key is read once per worker thread; Lua never sees it.

local key = fk.key{ file = params.key_file, env = params.key_env }

function encode(bytes, ctx)
  return fk.encrypt(key, bytes)
end

function decode(bytes, ctx)
  return fk.decrypt(key, bytes)
end
