//+------------------------------------------------------------------+
//| Hmac.mqh: HMAC-SHA256 (RFC 2104) on the terminal's own SHA-256.   |
//| CryptEncode hashes but has no HMAC, so the construction is here:  |
//| H((K ^ opad) || H((K ^ ipad) || message)) over 64-byte blocks,    |
//| a key longer than a block hashed first.                            |
//+------------------------------------------------------------------+
#ifndef POSCAL_HMAC_MQH
#define POSCAL_HMAC_MQH

#include "Platform.mqh"
#include "Text.mqh"

#define POSCAL_SHA256_BLOCK  64
#define POSCAL_SHA256_LENGTH 32

//--- SHA-256 of `data` into `digest` (32 bytes). CryptEncode ignores the key for hashes.
bool PosCalSha256(IN_ARRAY(uchar, data), OUT_ARRAY(uchar, digest))
  {
   ARRAY(uchar, no_key);
   ArrayResize(digest, 0);
   return CryptEncode(CRYPT_HASH_SHA256, data, no_key, digest) == POSCAL_SHA256_LENGTH;
  }

bool PosCalHmacSha256(IN_ARRAY(uchar, key), IN_ARRAY(uchar, message), OUT_ARRAY(uchar, mac))
  {
   ArrayResize(mac, 0);
   ARRAY(uchar, block);
   ArrayResize(block, POSCAL_SHA256_BLOCK);
   for(int i = 0; i < POSCAL_SHA256_BLOCK; i++)
      block[i] = 0;
   if(ArraySize(key) > POSCAL_SHA256_BLOCK)
     {
      ARRAY(uchar, hashed_key);
      if(!PosCalSha256(key, hashed_key))
         return false;
      ArrayCopy(block, hashed_key, 0, 0, POSCAL_SHA256_LENGTH);
     }
   else
      if(ArraySize(key) > 0)
         ArrayCopy(block, key, 0, 0, ArraySize(key));

   ARRAY(uchar, inner);
   ArrayResize(inner, POSCAL_SHA256_BLOCK);
   for(int i = 0; i < POSCAL_SHA256_BLOCK; i++)
      inner[i] = (uchar)(block[i] ^ 0x36);
   PosCalAppendBytes(inner, message);
   ARRAY(uchar, inner_digest);
   if(!PosCalSha256(inner, inner_digest))
      return false;

   ARRAY(uchar, outer);
   ArrayResize(outer, POSCAL_SHA256_BLOCK);
   for(int i = 0; i < POSCAL_SHA256_BLOCK; i++)
      outer[i] = (uchar)(block[i] ^ 0x5c);
   PosCalAppendBytes(outer, inner_digest);
   return PosCalSha256(outer, mac);
  }

//--- The first `hex_digits` hexadecimal digits of SHA-256 over the UTF-8 of `text`: a short,
//--- stable name for a piece of text (a deal, a batch, a URL).
string PosCalDigestHex(const string text, const int hex_digits)
  {
   ARRAY(uchar, bytes);
   PosCalUtf8(text, bytes);
   ARRAY(uchar, digest);
   if(!PosCalSha256(bytes, digest))
      return "";
   return PosCalHex(digest, hex_digits / 2);
  }

#endif
