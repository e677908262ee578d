//+------------------------------------------------------------------+
//| Request.mqh: from deals read out of history to outbox batches,    |
//| and from a batch to the exact request sent: headers and the body  |
//| bytes that were signed.                                           |
//+------------------------------------------------------------------+
#ifndef POSCAL_REQUEST_MQH
#define POSCAL_REQUEST_MQH

#include "Platform.mqh"
#include "Text.mqh"
#include "DealJson.mqh"
#include "Webhook.mqh"
#include "Outbox.mqh"

#define POSCAL_USER_AGENT "PosCalSync-MT5/1.0"
//--- The deals of one body stay within this many bytes: well under ingest's 256 KiB limit
//--- once the account and the envelope are added.
#define POSCAL_MAX_DEALS_BYTES 196608

//--- The outbox entry for deals [start, end) of `deal_json`, whose tickets and fingerprints
//--- are alongside at the same indexes.
void PosCalMakeEntry(const long login, IN_ARRAY(ulong, tickets), IN_ARRAY(string, prints),
                     IN_ARRAY(string, deal_json), const int start, const int end, const long offset_seconds,
                     const ulong sequence, PosCalOutboxEntry &entry)
  {
   ARRAY(ulong, batch_tickets);
   ArrayResize(batch_tickets, end - start);
   string joined = "";
   string batch_prints = "";
   for(int i = start; i < end; i++)
     {
      batch_tickets[i - start] = tickets[i];
      joined += (i > start ? "," : "") + deal_json[i];
      batch_prints += (i > start ? "," : "") + prints[i];
     }
   entry.sequence = sequence;
   entry.webhook_id = PosCalWebhookId(login, batch_tickets, joined);
   entry.offset_seconds = offset_seconds;
   entry.tickets = PosCalTicketsText(batch_tickets);
   entry.prints = batch_prints;
   entry.deals_json = joined;
  }

//--- The request for one outbox entry, signed at `timestamp` (TimeGMT()): the headers for
//--- WebRequest and the body's bytes, which are exactly the bytes signed. False if hashing
//--- failed.
bool PosCalComposeRequest(const PosCalOutboxEntry &entry, const PosCalAccount &account, IN_ARRAY(uchar, key),
                          const long timestamp, string &headers, OUT_ARRAY(uchar, body))
  {
   PosCalUtf8(PosCalWebhookBody(account, entry.offset_seconds, entry.deals_json), body);
   string signature = PosCalSignature(key, entry.webhook_id, timestamp, body);
   if(signature == "")
      return false;
   headers = PosCalRequestHeaders(entry.webhook_id, timestamp, signature, POSCAL_USER_AGENT);
   return true;
  }

#endif
