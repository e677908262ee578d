//+------------------------------------------------------------------+
//| Base64.mqh: RFC 4648 base64 (standard alphabet, padded), strict.  |
//| Written out rather than CryptEncode(CRYPT_BASE64), whose handling |
//| of line breaks and bad input is not documented: the secret must   |
//| be refused clearly when it is mistyped, never half-decoded.       |
//+------------------------------------------------------------------+
#ifndef POSCAL_BASE64_MQH
#define POSCAL_BASE64_MQH

#include "Platform.mqh"
#include "Text.mqh"

#define POSCAL_BASE64_ALPHABET "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

string PosCalBase64Encode(IN_ARRAY(uchar, data), const int count)
  {
   string alphabet = POSCAL_BASE64_ALPHABET;
   ARRAY(uchar, text);
   int size = count < ArraySize(data) ? count : ArraySize(data);
   ArrayResize(text, (size + 2) / 3 * 4);
   int out = 0;
   for(int i = 0; i < size; i += 3)
     {
      int remaining = size - i;
      uint group = (uint)data[i] << 16;
      if(remaining > 1)
         group |= (uint)data[i + 1] << 8;
      if(remaining > 2)
         group |= (uint)data[i + 2];
      text[out++] = (uchar)StringGetCharacter(alphabet, (int)((group >> 18) & 63));
      text[out++] = (uchar)StringGetCharacter(alphabet, (int)((group >> 12) & 63));
      text[out++] = remaining > 1 ? (uchar)StringGetCharacter(alphabet, (int)((group >> 6) & 63)) : (uchar)'=';
      text[out++] = remaining > 2 ? (uchar)StringGetCharacter(alphabet, (int)(group & 63)) : (uchar)'=';
     }
   return PosCalFromUtf8(text, out);
  }

//--- The 6-bit value of one base64 character, or -1.
int PosCalBase64Value(const ushort unit)
  {
   if(unit >= 'A' && unit <= 'Z')
      return unit - 'A';
   if(unit >= 'a' && unit <= 'z')
      return unit - 'a' + 26;
   if(unit >= '0' && unit <= '9')
      return unit - '0' + 52;
   if(unit == '+')
      return 62;
   if(unit == '/')
      return 63;
   return -1;
  }

//--- Decodes padded base64; false (and no bytes) for anything else: a length that is not a
//--- multiple of 4, a character outside the alphabet, padding anywhere but the end.
bool PosCalBase64Decode(const string text, OUT_ARRAY(uchar, data))
  {
   ArrayResize(data, 0);
   int units = StringLen(text);
   if(units % 4 != 0)
      return false;
   int padding = 0;
   if(units > 0 && StringGetCharacter(text, units - 1) == '=')
      padding++;
   if(units > 1 && StringGetCharacter(text, units - 2) == '=')
      padding++;
   ArrayResize(data, units / 4 * 3 - padding);
   int out = 0;
   for(int i = 0; i < units; i += 4)
     {
      uint group = 0;
      for(int j = 0; j < 4; j++)
        {
         int value = 0;
         bool is_padding = i + j >= units - padding;
         if(!is_padding)
           {
            value = PosCalBase64Value(StringGetCharacter(text, i + j));
            if(value < 0)
              {
               ArrayResize(data, 0);
               return false;
              }
           }
         group = (group << 6) | (uint)value;
        }
      data[out++] = (uchar)((group >> 16) & 255);
      if(out < ArraySize(data))
         data[out++] = (uchar)((group >> 8) & 255);
      if(out < ArraySize(data))
         data[out++] = (uchar)(group & 255);
     }
   return true;
  }

#endif
