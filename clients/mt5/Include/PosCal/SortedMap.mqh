//+------------------------------------------------------------------+
//| SortedMap.mqh: ulong keys to strings, kept sorted (MQL5 has no    |
//| map). Holds what was sent (ticket -> fingerprint), what waits in  |
//| the outbox, and the outbox's order (sequence -> file name).       |
//+------------------------------------------------------------------+
#ifndef POSCAL_SORTEDMAP_MQH
#define POSCAL_SORTEDMAP_MQH

#include "Platform.mqh"
#include "Text.mqh"

//--- The line a map keeps for one entry: "key value", ended by a line feed.
string PosCalMapLine(const ulong key, const string value)
  {
   return PosCalULongText(key) + " " + value + "\n";
  }

class PosCalSortedMap
  {
private:
   ARRAY(ulong, m_keys);
   ARRAY(string, m_values);

   //--- The first index whose key is not below `key`.
   int               LowerBound(const ulong key) const
     {
      int low = 0;
      int high = ArraySize(m_keys);
      while(low < high)
        {
         int middle = (low + high) / 2;
         if(m_keys[middle] < key)
            low = middle + 1;
         else
            high = middle;
        }
      return low;
     }

public:
   int               Count(void) const { return ArraySize(m_keys); }
   ulong             KeyAt(const int index) const { return m_keys[index]; }
   string            ValueAt(const int index) const { return m_values[index]; }

   //--- The index of `key`, or -1.
   int               Find(const ulong key) const
     {
      int at = LowerBound(key);
      if(at < ArraySize(m_keys) && m_keys[at] == key)
         return at;
      return -1;
     }

   //--- Whether `key` is present with exactly `value`.
   bool              Holds(const ulong key, const string value) const
     {
      int at = Find(key);
      return at >= 0 && m_values[at] == value;
     }

   //--- Sets `key` to `value`. Keys arriving in ascending order (tickets do) are appended
   //--- without moving anything.
   void              Put(const ulong key, const string value)
     {
      int count = ArraySize(m_keys);
      int at = (count == 0 || m_keys[count - 1] < key) ? count : LowerBound(key);
      if(at < count && m_keys[at] == key)
        {
         m_values[at] = value;
         return;
        }
      ArrayResize(m_keys, count + 1, 4096);
      ArrayResize(m_values, count + 1, 4096);
      for(int i = count; i > at; i--)
        {
         m_keys[i] = m_keys[i - 1];
         m_values[i] = m_values[i - 1];
        }
      m_keys[at] = key;
      m_values[at] = value;
     }

   bool              Remove(const ulong key)
     {
      int at = Find(key);
      if(at < 0)
         return false;
      int count = ArraySize(m_keys);
      for(int i = at; i < count - 1; i++)
        {
         m_keys[i] = m_keys[i + 1];
         m_values[i] = m_values[i + 1];
        }
      ArrayResize(m_keys, count - 1);
      ArrayResize(m_values, count - 1);
      return true;
     }

   void              Clear(void)
     {
      ArrayResize(m_keys, 0);
      ArrayResize(m_values, 0);
     }

   //--- Reads "key value" lines (a later line for the same key wins); a line that is not one,
   //--- such as the torn last line of a file cut short, is skipped. Returns how many were.
   int               Load(const string text)
     {
      ARRAY(string, lines);
      int count = PosCalSplit(text, '\n', lines);
      int skipped = 0;
      for(int i = 0; i < count; i++)
        {
         string line = PosCalTrimmed(lines[i]);
         if(StringLen(line) == 0)
            continue;
         int space = -1;
         for(int j = 0; j < StringLen(line) && space < 0; j++)
            if(StringGetCharacter(line, j) == ' ')
               space = j;
         ulong key = 0;
         if(space <= 0 || space == StringLen(line) - 1
            || !PosCalParseULong(PosCalSlice(line, 0, space), key))
           {
            skipped++;
            continue;
           }
         Put(key, PosCalSlice(line, space + 1, StringLen(line) - space - 1));
        }
      return skipped;
     }

   //--- One "key value" line per entry: what Load reads back.
   string            Text(void) const
     {
      string text = "";
      for(int i = 0; i < ArraySize(m_keys); i++)
         text += PosCalMapLine(m_keys[i], m_values[i]);
      return text;
     }
  };

#endif
