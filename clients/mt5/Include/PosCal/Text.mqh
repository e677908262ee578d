//+------------------------------------------------------------------+
//| Text.mqh: strings as the exact bytes that are sent and signed,    |
//| and numbers written by hand so a ulong above 2^63 stays exact.    |
//+------------------------------------------------------------------+
#ifndef POSCAL_TEXT_MQH
#define POSCAL_TEXT_MQH

#include "Platform.mqh"

//--- The UTF-8 bytes of a string (MQL5 strings are UTF-16), without the terminating NUL that
//--- StringToCharArray copies when it converts the whole string: a signature over that NUL
//--- would never match the body that is sent.
int PosCalUtf8(const string text, OUT_ARRAY(uchar, bytes))
  {
   ArrayFree(bytes);
   int copied = StringToCharArray(text, bytes, 0, -1, CP_UTF8);
   if(copied > 0 && bytes[copied - 1] == 0)
      copied--;
   if(copied < 0)
      copied = 0;
   ArrayResize(bytes, copied);
   return copied;
  }

//--- The first `count` bytes of a UTF-8 array as a string.
string PosCalFromUtf8(IN_ARRAY(uchar, bytes), const int count)
  {
   if(count <= 0)
      return "";
   return CharArrayToString(bytes, 0, count, CP_UTF8);
  }

//--- Appends `source` to the end of `target`.
void PosCalAppendBytes(OUT_ARRAY(uchar, target), IN_ARRAY(uchar, source))
  {
   int at = ArraySize(target);
   int size = ArraySize(source);
   if(size == 0)
      return;
   ArrayResize(target, at + size);
   ArrayCopy(target, source, at, 0, size);
  }

//--- How many bytes a string takes in UTF-8, without converting it. A lone surrogate counts as
//--- the three bytes of the U+FFFD that replaces it.
int PosCalUtf8Length(const string text)
  {
   int length = 0;
   int units = StringLen(text);
   for(int i = 0; i < units; i++)
     {
      ushort unit = StringGetCharacter(text, i);
      if(unit < 0x80)
         length += 1;
      else
         if(unit < 0x800)
            length += 2;
         else
            if(unit >= 0xD800 && unit <= 0xDBFF && i + 1 < units
               && StringGetCharacter(text, i + 1) >= 0xDC00 && StringGetCharacter(text, i + 1) <= 0xDFFF)
              {
               length += 4;
               i++;
              }
            else
               length += 3;
     }
   return length;
  }

string PosCalULongText(ulong value)
  {
   if(value == 0)
      return "0";
   string digits = "";
   while(value > 0)
     {
      digits = ShortToString((ushort)('0' + (int)(value % 10))) + digits;
      value /= 10;
     }
   return digits;
  }

string PosCalLongText(const long value)
  {
   if(value < 0)
      return "-" + PosCalULongText((ulong)(-(value + 1)) + 1);  // LONG_MIN has no positive twin
   return PosCalULongText((ulong)value);
  }

//--- `value` in decimal, left-padded with zeros to `width` digits (so names sort by number).
string PosCalZeroPadded(const ulong value, const int width)
  {
   string digits = PosCalULongText(value);
   while(StringLen(digits) < width)
      digits = "0" + digits;
   return digits;
  }

//--- Lower-case hexadecimal of the first `count` bytes.
string PosCalHex(IN_ARRAY(uchar, bytes), const int count)
  {
   string alphabet = "0123456789abcdef";
   string text = "";
   for(int i = 0; i < count && i < ArraySize(bytes); i++)
      text += StringSubstr(alphabet, bytes[i] >> 4, 1) + StringSubstr(alphabet, bytes[i] & 15, 1);
   return text;
  }

//--- `count` UTF-16 units from `start`; empty for a count of zero or less (StringSubstr reads a
//--- length of -1 as "to the end", so it is never handed a computed length that may be empty).
string PosCalSlice(const string text, const int start, const int count)
  {
   if(count <= 0)
      return "";
   return StringSubstr(text, start, count);
  }

bool PosCalIsSpace(const ushort unit)
  {
   return unit == ' ' || unit == '\t' || unit == '\r' || unit == '\n';
  }

//--- The string without leading and trailing spaces, tabs and line breaks.
string PosCalTrimmed(const string text)
  {
   int first = 0;
   int last = StringLen(text) - 1;
   while(first <= last && PosCalIsSpace(StringGetCharacter(text, first)))
      first++;
   while(last >= first && PosCalIsSpace(StringGetCharacter(text, last)))
      last--;
   if(last < first)
      return "";
   return PosCalSlice(text, first, last - first + 1);
  }

//--- ASCII letters lowered; anything else unchanged (header names are ASCII).
string PosCalAsciiLower(const string text)
  {
   string lowered = "";
   int units = StringLen(text);
   for(int i = 0; i < units; i++)
     {
      ushort unit = StringGetCharacter(text, i);
      if(unit >= 'A' && unit <= 'Z')
         unit = (ushort)(unit + 32);
      lowered += ShortToString(unit);
     }
   return lowered;
  }

//--- The number written by `count` decimal digits from `start`, or -1 if any is not a digit
//--- (at most 18 digits, so the value always fits a long).
long PosCalDigits(const string text, const int start, const int count)
  {
   if(count <= 0 || count > 18 || start < 0 || start + count > StringLen(text))
      return -1;
   long value = 0;
   for(int i = start; i < start + count; i++)
     {
      ushort unit = StringGetCharacter(text, i);
      if(unit < '0' || unit > '9')
         return -1;
      value = value * 10 + (unit - '0');
     }
   return value;
  }

//--- The decimal ulong that is the whole of `text` (no sign, no spaces), or false.
bool PosCalParseULong(const string text, ulong &value)
  {
   int units = StringLen(text);
   if(units == 0 || units > 20)
      return false;
   value = 0;
   for(int i = 0; i < units; i++)
     {
      ushort unit = StringGetCharacter(text, i);
      if(unit < '0' || unit > '9')
         return false;
      ulong digit = (ulong)(unit - '0');
      if(value > (ULONG_MAX - digit) / 10)
         return false;
      value = value * 10 + digit;
     }
   return true;
  }

//--- The pieces of `text` between `separator` characters, in order (an empty text is one
//--- empty piece). Returns how many.
int PosCalSplit(const string text, const ushort separator, OUT_ARRAY(string, pieces))
  {
   ArrayResize(pieces, 0);
   int units = StringLen(text);
   int start = 0;
   int count = 0;
   for(int i = 0; i <= units; i++)
     {
      if(i == units || StringGetCharacter(text, i) == separator)
        {
         ArrayResize(pieces, count + 1, 64);
         pieces[count] = PosCalSlice(text, start, i - start);
         count++;
         start = i + 1;
        }
     }
   return count;
  }

#endif
