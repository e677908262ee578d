//+------------------------------------------------------------------+
//| Outbox.mqh: a batch waiting to be delivered, as the text of its   |
//| file, and the names of the files the EA keeps per account.        |
//+------------------------------------------------------------------+
#ifndef POSCAL_OUTBOX_MQH
#define POSCAL_OUTBOX_MQH

#include "Platform.mqh"
#include "Text.mqh"
#include "Hmac.mqh"
#include "SortedMap.mqh"

#define POSCAL_OUTBOX_FORMAT "poscal-outbox 1"

//--- One batch of deals, fixed when it was queued: its webhook id, the server's offset from
//--- UTC then, its tickets and their fingerprints (comma-separated, in the same order) and the
//--- deals' JSON objects joined by commas. The account's balance and equity are read when it is
//--- sent, so a late retry reports them fresh.
struct PosCalOutboxEntry
  {
   ulong             sequence;        // order of queueing: the outbox is sent oldest first
   string            webhook_id;
   long              offset_seconds;
   string            tickets;
   string            prints;
   string            deals_json;
  };

//--- The file's text: one "name value" line per field, then "end". None of the values can hold
//--- a line break (the JSON escapes them), and a file without its "end" line is not an entry.
string PosCalOutboxText(const PosCalOutboxEntry &entry)
  {
   string text = POSCAL_OUTBOX_FORMAT;
   text += "\nsequence " + PosCalULongText(entry.sequence);
   text += "\nid " + entry.webhook_id;
   text += "\noffset " + PosCalLongText(entry.offset_seconds);
   text += "\ntickets " + entry.tickets;
   text += "\nprints " + entry.prints;
   text += "\ndeals " + entry.deals_json;
   text += "\nend\n";
   return text;
  }

//--- The value of the line `name value`, or false when the line is something else.
bool PosCalOutboxField(const string line, const string name, string &value)
  {
   int prefix = StringLen(name) + 1;
   if(StringLen(line) < prefix || StringSubstr(line, 0, prefix) != name + " ")
      return false;
   value = PosCalSlice(line, prefix, StringLen(line) - prefix);
   return true;
  }

//--- The tickets of a comma-separated list, or false if any is not a ticket.
bool PosCalParseTickets(const string text, OUT_ARRAY(ulong, tickets))
  {
   ARRAY(string, pieces);
   int count = PosCalSplit(text, ',', pieces);
   ArrayResize(tickets, count);
   for(int i = 0; i < count; i++)
     {
      ulong ticket = 0;
      if(!PosCalParseULong(pieces[i], ticket) || ticket == 0)
        {
         ArrayResize(tickets, 0);
         return false;
        }
      tickets[i] = ticket;
     }
   return true;
  }

string PosCalTicketsText(IN_ARRAY(ulong, tickets))
  {
   string text = "";
   for(int i = 0; i < ArraySize(tickets); i++)
      text += (i > 0 ? "," : "") + PosCalULongText(tickets[i]);
   return text;
  }

//--- Reads a file's text back into an entry; false for anything that is not a whole entry.
bool PosCalParseOutbox(const string text, PosCalOutboxEntry &entry)
  {
   ARRAY(string, lines);
   int count = PosCalSplit(text, '\n', lines);
   // the format line, six fields, "end", and the empty piece after the final line feed
   if(count != 9 || lines[0] != POSCAL_OUTBOX_FORMAT || lines[7] != "end" || lines[8] != "")
      return false;
   string sequence = "";
   string webhook_id = "";
   string offset = "";
   string tickets_text = "";
   string prints_text = "";
   string deals_json = "";
   ulong sequence_number = 0;
   ARRAY(ulong, tickets);
   if(!PosCalOutboxField(lines[1], "sequence", sequence) || !PosCalParseULong(sequence, sequence_number)
      || !PosCalOutboxField(lines[2], "id", webhook_id) || StringLen(webhook_id) == 0
      || !PosCalOutboxField(lines[3], "offset", offset)
      || !PosCalOutboxField(lines[4], "tickets", tickets_text) || !PosCalParseTickets(tickets_text, tickets)
      || !PosCalOutboxField(lines[5], "prints", prints_text)
      || !PosCalOutboxField(lines[6], "deals", deals_json) || StringLen(deals_json) == 0)
      return false;
   ARRAY(string, prints);
   if(PosCalSplit(prints_text, ',', prints) != ArraySize(tickets))
      return false;
   bool negative = StringLen(offset) > 0 && StringGetCharacter(offset, 0) == '-';
   long magnitude = PosCalDigits(offset, negative ? 1 : 0, StringLen(offset) - (negative ? 1 : 0));
   if(magnitude < 0)
      return false;
   entry.sequence = sequence_number;
   entry.webhook_id = webhook_id;
   entry.offset_seconds = negative ? -magnitude : magnitude;
   entry.tickets = tickets_text;
   entry.prints = prints_text;
   entry.deals_json = deals_json;
   return true;
  }

//--- The folder of one account's state, under MQL5\Files: the login and a digest of the ingest
//--- URL, so pointing the EA at another connection starts that connection's history afresh.
string PosCalStateFolder(const long login, const string url)
  {
   return "PosCalSync\\" + PosCalLongText(login) + "-" + PosCalDigestHex(url, 8);
  }

//--- An outbox file's name: its sequence, zero-padded so names sort in queueing order.
string PosCalOutboxFileName(const ulong sequence)
  {
   return PosCalZeroPadded(sequence, 12) + ".batch";
  }

//--- Whether a deal read from history is to be queued: not while it waits in the outbox with
//--- this very content, and not once sent with it, unless all history is being resent.
bool PosCalNeedsSending(const PosCalSortedMap &sent, const PosCalSortedMap &queued, const ulong ticket,
                        const string fingerprint, const bool resend_all)
  {
   if(queued.Holds(ticket, fingerprint))
      return false;
   return resend_all || !sent.Holds(ticket, fingerprint);
  }

#endif
