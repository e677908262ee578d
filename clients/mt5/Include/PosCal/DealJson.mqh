//+------------------------------------------------------------------+
//| DealJson.mqh: the webhook body ingest expects, written exactly:   |
//| {"account": {...}, "server_time_offset_seconds": N,               |
//|  "deals": [TradeDeal...]} with each deal holding exactly the      |
//| MetaTrader5 Python package's TradeDeal fields, in its order.      |
//+------------------------------------------------------------------+
#ifndef POSCAL_DEALJSON_MQH
#define POSCAL_DEALJSON_MQH

#include "Platform.mqh"
#include "Text.mqh"
#include "Hmac.mqh"

//--- One history deal, as HistoryDealGet* reads it.
struct PosCalDeal
  {
   ulong             ticket;
   ulong             order;
   long              time;          // trade server wall clock, seconds
   long              time_msc;      // the same in milliseconds
   long              type;          // ENUM_DEAL_TYPE
   long              entry;         // ENUM_DEAL_ENTRY
   long              magic;
   ulong             position_id;
   long              reason;        // ENUM_DEAL_REASON
   double            volume;
   double            price;
   double            commission;
   double            swap;
   double            profit;
   double            fee;
   string            symbol;
   string            comment;
   string            external_id;
  };

struct PosCalAccount
  {
   long              login;
   string            server;
   string            currency;
   double            balance;
   double            equity;
  };

string PosCalHexDigit(const int value)
  {
   return StringSubstr("0123456789abcdef", value & 15, 1);
  }

//--- How one UTF-16 unit is written inside a JSON string; empty when it is copied as it is.
//--- A lone surrogate (half of a pair, not a character, refused by JSON parsers) is U+FFFD.
string PosCalJsonEscape(const ushort unit)
  {
   switch(unit)
     {
      case '"':
         return "\\\"";
      case '\\':
         return "\\\\";
      case '\n':
         return "\\n";
      case '\r':
         return "\\r";
      case '\t':
         return "\\t";
      case 0x08:
         return "\\b";
      case 0x0C:
         return "\\f";
     }
   if(unit < 0x20)
      return "\\u00" + PosCalHexDigit(unit >> 4) + PosCalHexDigit(unit);
   if(unit >= 0xD800 && unit <= 0xDFFF)
      return ShortToString(0xFFFD);
   return "";
  }

//--- A JSON string literal: quotes, backslashes and control characters escaped, everything
//--- else as it is (it becomes UTF-8 when the whole body is converted).
string PosCalJsonString(const string text)
  {
   string json = "\"";
   int units = StringLen(text);
   int run = 0;  // start of the stretch copied as it is
   for(int i = 0; i < units; i++)
     {
      ushort unit = StringGetCharacter(text, i);
      if(unit >= 0xD800 && unit <= 0xDBFF && i + 1 < units
         && StringGetCharacter(text, i + 1) >= 0xDC00 && StringGetCharacter(text, i + 1) <= 0xDFFF)
        {
         i++;  // a whole surrogate pair: one character, copied as it is
         continue;
        }
      string escaped = PosCalJsonEscape(unit);
      if(escaped == "")
         continue;
      json += PosCalSlice(text, run, i - run) + escaped;
      run = i + 1;
     }
   json += PosCalSlice(text, run, units - run) + "\"";
   return json;
  }

//--- A JSON number with the fewest decimals that read back as exactly the same double, so
//--- 1.085 is written 1.085 and never 1.08499999999999996447. A value that no fixed-point text
//--- of 16 decimals or fewer reproduces is written in exponent form; NaN and infinities, which
//--- JSON cannot write, are null (ingest then refuses that deal alone, with its reason).
string PosCalJsonNumber(const double value)
  {
   if(!MathIsValidNumber(value))
      return "null";
   for(int digits = 0; digits <= 16; digits++)
     {
      string text = DoubleToString(value, digits);
      if(StringToDouble(text) == value)
         return text;
     }
   return DoubleToString(value, -16);
  }

string PosCalJsonField(const string name, const string json_value, const bool first)
  {
   return (first ? "\"" : ",\"") + name + "\":" + json_value;
  }

//--- One deal as a TradeDeal object: exactly its 18 fields, in the package's order.
string PosCalDealJson(const PosCalDeal &deal)
  {
   string json = "{";
   json += PosCalJsonField("ticket", PosCalULongText(deal.ticket), true);
   json += PosCalJsonField("order", PosCalULongText(deal.order), false);
   json += PosCalJsonField("time", PosCalLongText(deal.time), false);
   json += PosCalJsonField("time_msc", PosCalLongText(deal.time_msc), false);
   json += PosCalJsonField("type", PosCalLongText(deal.type), false);
   json += PosCalJsonField("entry", PosCalLongText(deal.entry), false);
   json += PosCalJsonField("magic", PosCalLongText(deal.magic), false);
   json += PosCalJsonField("position_id", PosCalULongText(deal.position_id), false);
   json += PosCalJsonField("reason", PosCalLongText(deal.reason), false);
   json += PosCalJsonField("volume", PosCalJsonNumber(deal.volume), false);
   json += PosCalJsonField("price", PosCalJsonNumber(deal.price), false);
   json += PosCalJsonField("commission", PosCalJsonNumber(deal.commission), false);
   json += PosCalJsonField("swap", PosCalJsonNumber(deal.swap), false);
   json += PosCalJsonField("profit", PosCalJsonNumber(deal.profit), false);
   json += PosCalJsonField("fee", PosCalJsonNumber(deal.fee), false);
   json += PosCalJsonField("symbol", PosCalJsonString(deal.symbol), false);
   json += PosCalJsonField("comment", PosCalJsonString(deal.comment), false);
   json += PosCalJsonField("external_id", PosCalJsonString(deal.external_id), false);
   return json + "}";
  }

//--- A deal's fingerprint: names its content, so reconciliation notices a deal the server
//--- changed after it was sent.
string PosCalDealFingerprint(const string deal_json)
  {
   return PosCalDigestHex(deal_json, 16);
  }

string PosCalAccountJson(const PosCalAccount &account)
  {
   string json = "{";
   json += PosCalJsonField("login", PosCalLongText(account.login), true);
   json += PosCalJsonField("server", PosCalJsonString(account.server), false);
   json += PosCalJsonField("currency", PosCalJsonString(account.currency), false);
   json += PosCalJsonField("balance", PosCalJsonNumber(account.balance), false);
   json += PosCalJsonField("equity", PosCalJsonNumber(account.equity), false);
   return json + "}";
  }

//--- The whole body. `deals_json` is the deals' objects joined by commas, as the outbox keeps
//--- them; the offset is TimeTradeServer() - TimeGMT() when the deals were read.
string PosCalWebhookBody(const PosCalAccount &account, const long server_time_offset_seconds,
                         const string deals_json)
  {
   string json = "{";
   json += PosCalJsonField("account", PosCalAccountJson(account), true);
   json += PosCalJsonField("server_time_offset_seconds", PosCalLongText(server_time_offset_seconds), false);
   json += PosCalJsonField("deals", "[" + deals_json + "]", false);
   return json + "}";
  }

//--- Where the batch that starts at `start` ends (exclusive): at most `max_deals` deals whose
//--- JSON, commas included, stays within `max_bytes`. A batch always takes at least one deal,
//--- so a queue never stalls behind one deal larger than the budget.
int PosCalBatchEnd(IN_ARRAY(string, deal_json), const int start, const int max_deals, const int max_bytes)
  {
   int total = ArraySize(deal_json);
   int end = start;
   int bytes = 0;
   while(end < total && end - start < max_deals)
     {
      int size = PosCalUtf8Length(deal_json[end]) + (end > start ? 1 : 0);
      if(end > start && bytes + size > max_bytes)
         break;
      bytes += size;
      end++;
     }
   return end;
  }

#endif
