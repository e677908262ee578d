//+------------------------------------------------------------------+
//|                                                   PosCalSync.mq5 |
//| Sends this account's deals to the PosCal journal as signed        |
//| Standard Webhooks, without sharing any password. Deals are read   |
//| from the terminal's history, queued in an outbox on disk, and     |
//| delivered with retries; the history is reconciled periodically,  |
//| so nothing missed while the terminal was off stays missing.       |
//+------------------------------------------------------------------+
#property copyright "PosCal"
#property version   "1.00"
#property description "Syncs this account's deals to the PosCal journal (signed webhooks)."
#property description "Add the Ingest URL's host to Tools > Options > Expert Advisors > Allow WebRequest for listed URL."

#include <PosCal/Request.mqh>
#include <PosCal/Delivery.mqh>
#include <PosCal/SortedMap.mqh>

input string   InpIngestUrl        = "";               // Ingest URL (the connection's webhook URL)
input string   InpWebhookSecret    = "";               // Webhook secret (whsec_...)
input datetime InpHistoryStart     = D'2020.01.01';    // Send history from (trade server time)
input int      InpBatchSize        = 100;              // Deals per webhook (1-500)
input int      InpReconcileMinutes = 5;                // Reconcile with the history every N minutes
input int      InpReconcileDays    = 7;                // ... looking back this many days
input bool     InpResendHistory    = false;            // Resend all history from the start date now
input bool     InpCommonFolder     = false;            // Keep the state in the common Files folder

#define LOG_PREFIX    "PosCalSync: "
#define RESEND_BUTTON "PosCalSyncResend"
#define SEND_TIMEOUT_MS 15000
#define SEND_BUDGET_MS  3000                           // per timer tick, so the EA stays responsive
#define ERR_WEBREQUEST_NOT_ALLOWED 4014                // ERR_FUNCTION_NOT_ALLOWED
#define ERR_WEBREQUEST_BAD_ADDRESS 5200                // ERR_WEBREQUEST_INVALID_ADDRESS

PosCalSortedMap g_sent;        // ticket -> fingerprint: delivered (or refused), from sent.txt
PosCalSortedMap g_queued;      // ticket -> fingerprint: waiting in the outbox
PosCalSortedMap g_outbox;      // sequence -> outbox file name, oldest first
uchar    g_key[];
int      g_batch_size = 100;
int      g_file_flags = 0;
long     g_login = 0;
string   g_folder = "";
ulong    g_next_sequence = 1;
bool     g_ready = false;
bool     g_reconcile_all = true;
bool     g_resend_all = false;
bool     g_trade_seen = false;
datetime g_next_reconcile = 0;
int      g_failures = 0;
datetime g_next_attempt = 0;   // GMT
bool     g_paused = false;
datetime g_last_allow_list_log = 0;
string   g_last_result = "";

//+------------------------------------------------------------------+
int OnInit()
  {
   if(MQLInfoInteger(MQL_TESTER))
     {
      Print(LOG_PREFIX, "does not run in the Strategy Tester (WebRequest is not available there)");
      return INIT_FAILED;
     }
   string reason = "";
   if(!PosCalCheckUrl(InpIngestUrl, reason))
     {
      Print(LOG_PREFIX, reason);
      return INIT_PARAMETERS_INCORRECT;
     }
   if(!PosCalDecodeSecret(InpWebhookSecret, g_key, reason))
     {
      Print(LOG_PREFIX, reason);
      return INIT_PARAMETERS_INCORRECT;
     }
   g_batch_size = InpBatchSize < 1 ? 1 : (InpBatchSize > 500 ? 500 : InpBatchSize);
   if(g_batch_size != InpBatchSize)
      Print(LOG_PREFIX, "Deals per webhook must be 1-500; using ", g_batch_size);
   g_file_flags = InpCommonFolder ? FILE_COMMON : 0;
   // An EA re-initialised (inputs, account or chart changed) keeps its globals: start afresh.
   g_ready = false;
   g_sent.Clear();
   g_queued.Clear();
   g_outbox.Clear();
   g_reconcile_all = true;
   g_resend_all = InpResendHistory;
   g_trade_seen = false;
   g_failures = 0;
   g_next_attempt = 0;
   g_paused = false;
   MathSrand((uint)GetTickCount());
   CreateResendButton();
   EventSetTimer(1);
   Print(LOG_PREFIX, "sending to ", PosCalUrlOrigin(InpIngestUrl), "; history from ",
         TimeToString(InpHistoryStart, TIME_DATE), (InpResendHistory ? " (resending all of it)" : ""));
   return INIT_SUCCEEDED;
  }

void OnDeinit(const int reason)
  {
   EventKillTimer();
   ObjectDelete(0, RESEND_BUTTON);
   Comment("");
  }

//--- A trade only says "look at the history now": the deal itself is read from history, since
//--- this event fires several times per trade and not at all while the terminal is off.
void OnTradeTransaction(const MqlTradeTransaction &trans, const MqlTradeRequest &request,
                        const MqlTradeResult &result)
  {
   if(trans.type == TRADE_TRANSACTION_DEAL_ADD)
      g_trade_seen = true;
  }

void OnChartEvent(const int id, const long &lparam, const double &dparam, const string &sparam)
  {
   if(id == CHARTEVENT_OBJECT_CLICK && sparam == RESEND_BUTTON)
     {
      ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_STATE, false);
      g_resend_all = true;
      Print(LOG_PREFIX, "resending all history from ", TimeToString(InpHistoryStart, TIME_DATE));
     }
  }

void OnTimer()
  {
   if(!EnsureState())
      return;
   datetime now = TimeGMT();
   if(g_reconcile_all || g_resend_all)
     {
      Reconcile(InpHistoryStart, g_resend_all);
      g_reconcile_all = false;
      g_resend_all = false;
      g_trade_seen = false;
      g_next_reconcile = now + InpReconcileMinutes * 60;
     }
   else
      if(g_trade_seen || now >= g_next_reconcile)
        {
         datetime from = TimeTradeServer() - InpReconcileDays * 86400;
         Reconcile(from > InpHistoryStart ? from : InpHistoryStart, false);
         g_trade_seen = false;
         g_next_reconcile = now + InpReconcileMinutes * 60;
        }
   SendDue();
   ShowStatus();
  }

//+------------------------------------------------------------------+
//| State on disk, per account and connection: sent.txt (one          |
//| "ticket fingerprint" line per deal delivered, appended) and       |
//| outbox\NNNNNNNNNNNN.batch (one file per batch waiting).           |
//+------------------------------------------------------------------+
string SentPath(void)   { return g_folder + "\\sent.txt"; }
string OutboxDir(void)  { return g_folder + "\\outbox"; }
string OutboxPath(const string name) { return OutboxDir() + "\\" + name; }

bool EnsureState(void)
  {
   long login = AccountInfoInteger(ACCOUNT_LOGIN);
   if(login <= 0 || !TerminalInfoInteger(TERMINAL_CONNECTED))
      return false;
   if(g_ready && login == g_login)
      return true;
   g_login = login;
   g_folder = PosCalStateFolder(login, InpIngestUrl);
   g_sent.Clear();
   g_queued.Clear();
   g_outbox.Clear();
   FolderCreate("PosCalSync", g_file_flags);
   FolderCreate(g_folder, g_file_flags);
   FolderCreate(OutboxDir(), g_file_flags);
   string text = "";
   if(ReadText(SentPath(), text))
     {
      int skipped = g_sent.Load(text);
      if(skipped > 0)
         Print(LOG_PREFIX, skipped, " unreadable lines in ", SentPath(), " skipped (those deals are sent again)");
      WriteAtomically(SentPath(), g_sent.Text());  // compacted: one line per deal
     }
   LoadOutbox();
   g_ready = true;
   Print(LOG_PREFIX, "account ", login, ": ", g_sent.Count(), " deals sent before, ", g_outbox.Count(),
         " webhooks waiting (state in MQL5\\Files\\", g_folder, ")");
   return true;
  }

void LoadOutbox(void)
  {
   g_next_sequence = 1;
   string name = "";
   long search = FileFindFirst(OutboxDir() + "\\*.batch", name, g_file_flags);
   if(search == INVALID_HANDLE)
      return;
   do
     {
      string text = "";
      PosCalOutboxEntry entry;
      if(!ReadText(OutboxPath(name), text) || !PosCalParseOutbox(text, entry))
        {
         Print(LOG_PREFIX, "outbox file ", name, " is unreadable and was removed (its deals are queued again)");
         FileDelete(OutboxPath(name), g_file_flags);
         continue;
        }
      g_outbox.Put(entry.sequence, name);
      MarkQueued(entry);
      if(entry.sequence >= g_next_sequence)
         g_next_sequence = entry.sequence + 1;
     }
   while(FileFindNext(search, name));
   FileFindClose(search);
  }

void MarkQueued(const PosCalOutboxEntry &entry)
  {
   ulong tickets[];
   string prints[];
   PosCalParseTickets(entry.tickets, tickets);
   PosCalSplit(entry.prints, ',', prints);
   for(int i = 0; i < ArraySize(tickets) && i < ArraySize(prints); i++)
      g_queued.Put(tickets[i], prints[i]);
  }

bool ReadText(const string path, string &text)
  {
   int handle = FileOpen(path, FILE_READ | FILE_BIN | g_file_flags);
   if(handle == INVALID_HANDLE)
      return false;
   uchar bytes[];
   int size = (int)FileSize(handle);
   int read = size > 0 ? (int)FileReadArray(handle, bytes, 0, size) : 0;
   FileClose(handle);
   text = PosCalFromUtf8(bytes, read);
   return read == size;
  }

//--- Writes a new file beside the old one, then moves it over: a crash leaves the old file or
//--- the new one, never half of either.
bool WriteAtomically(const string path, const string text)
  {
   string temporary = path + ".tmp";
   uchar bytes[];
   int size = PosCalUtf8(text, bytes);
   int handle = FileOpen(temporary, FILE_WRITE | FILE_BIN | g_file_flags);
   if(handle == INVALID_HANDLE)
     {
      Print(LOG_PREFIX, "cannot write ", temporary, " (error ", GetLastError(), ")");
      return false;
     }
   uint written = size > 0 ? FileWriteArray(handle, bytes, 0, size) : 0;
   FileFlush(handle);
   FileClose(handle);
   if((int)written != size || !FileMove(temporary, g_file_flags, path, FILE_REWRITE | g_file_flags))
     {
      Print(LOG_PREFIX, "cannot write ", path, " (error ", GetLastError(), ")");
      FileDelete(temporary, g_file_flags);
      return false;
     }
   return true;
  }

bool Append(const string path, const string text)
  {
   int handle = FileOpen(path, FILE_READ | FILE_WRITE | FILE_BIN | g_file_flags);
   if(handle == INVALID_HANDLE)
      return false;
   uchar bytes[];
   int size = PosCalUtf8(text, bytes);
   FileSeek(handle, 0, SEEK_END);
   uint written = FileWriteArray(handle, bytes, 0, size);
   FileFlush(handle);
   FileClose(handle);
   return (int)written == size;
  }

//+------------------------------------------------------------------+
//| Reconciliation: the history, not the events, says what to send.  |
//+------------------------------------------------------------------+
void ReadDeal(const ulong ticket, PosCalDeal &deal)
  {
   deal.ticket = ticket;
   deal.order = (ulong)HistoryDealGetInteger(ticket, DEAL_ORDER);
   deal.time = (long)HistoryDealGetInteger(ticket, DEAL_TIME);
   deal.time_msc = HistoryDealGetInteger(ticket, DEAL_TIME_MSC);
   deal.type = HistoryDealGetInteger(ticket, DEAL_TYPE);
   deal.entry = HistoryDealGetInteger(ticket, DEAL_ENTRY);
   deal.magic = HistoryDealGetInteger(ticket, DEAL_MAGIC);
   deal.position_id = (ulong)HistoryDealGetInteger(ticket, DEAL_POSITION_ID);
   deal.reason = HistoryDealGetInteger(ticket, DEAL_REASON);
   deal.volume = HistoryDealGetDouble(ticket, DEAL_VOLUME);
   deal.price = HistoryDealGetDouble(ticket, DEAL_PRICE);
   deal.commission = HistoryDealGetDouble(ticket, DEAL_COMMISSION);
   deal.swap = HistoryDealGetDouble(ticket, DEAL_SWAP);
   deal.profit = HistoryDealGetDouble(ticket, DEAL_PROFIT);
   deal.fee = HistoryDealGetDouble(ticket, DEAL_FEE);
   deal.symbol = HistoryDealGetString(ticket, DEAL_SYMBOL);
   deal.comment = HistoryDealGetString(ticket, DEAL_COMMENT);
   deal.external_id = HistoryDealGetString(ticket, DEAL_EXTERNAL_ID);
  }

//--- Queues every deal since `from` (trade server time) that was not sent, or not with its
//--- current content; `resend_all` queues them whether sent or not (still not twice at once).
void Reconcile(const datetime from, const bool resend_all)
  {
   if(!HistorySelect(from, TimeTradeServer() + 86400))
     {
      Print(LOG_PREFIX, "could not read the history (error ", GetLastError(), "); trying again later");
      return;
     }
   int total = HistoryDealsTotal();
   ulong tickets[];
   string prints[];
   string deals[];
   int count = 0;
   for(int i = 0; i < total; i++)
     {
      ulong ticket = HistoryDealGetTicket(i);
      if(ticket == 0)
         continue;
      PosCalDeal deal;
      ReadDeal(ticket, deal);
      string json = PosCalDealJson(deal);
      string print = PosCalDealFingerprint(json);
      if(!PosCalNeedsSending(g_sent, g_queued, ticket, print, resend_all))
         continue;
      ArrayResize(tickets, count + 1, 1024);
      ArrayResize(prints, count + 1, 1024);
      ArrayResize(deals, count + 1, 1024);
      tickets[count] = ticket;
      prints[count] = print;
      deals[count] = json;
      count++;
     }
   if(count == 0)
      return;
   // The offset as the deals are read: right for new deals even if they are sent after a DST
   // change; history from before the server's last change is converted with today's offset.
   long offset = (long)(TimeTradeServer() - TimeGMT());
   int batches = 0;
   for(int start = 0; start < count;)
     {
      int end = PosCalBatchEnd(deals, start, g_batch_size, POSCAL_MAX_DEALS_BYTES);
      PosCalOutboxEntry entry;
      PosCalMakeEntry(g_login, tickets, prints, deals, start, end, offset, g_next_sequence, entry);
      string name = PosCalOutboxFileName(entry.sequence);
      if(!WriteAtomically(OutboxPath(name), PosCalOutboxText(entry)))
         break;  // the disk refused: the next reconciliation queues the rest
      g_outbox.Put(entry.sequence, name);
      MarkQueued(entry);
      g_next_sequence++;
      batches++;
      start = end;
     }
   Print(LOG_PREFIX, "queued ", count, " deals in ", batches, " webhooks");
  }

//+------------------------------------------------------------------+
//| Delivery: oldest first, one sender backoff for all.               |
//+------------------------------------------------------------------+
void SendDue(void)
  {
   if(g_paused || TimeGMT() < g_next_attempt)
      return;
   uint started = GetTickCount();
   while(g_outbox.Count() > 0 && GetTickCount() - started < SEND_BUDGET_MS)
      if(!SendOldest())
         break;
  }

void ReadAccount(PosCalAccount &account)
  {
   account.login = AccountInfoInteger(ACCOUNT_LOGIN);
   account.server = AccountInfoString(ACCOUNT_SERVER);
   account.currency = AccountInfoString(ACCOUNT_CURRENCY);
   account.balance = AccountInfoDouble(ACCOUNT_BALANCE);
   account.equity = AccountInfoDouble(ACCOUNT_EQUITY);
  }

//--- Sends the oldest batch; true when it is settled (delivered, or refused and dropped) and
//--- the next may follow at once.
bool SendOldest(void)
  {
   ulong sequence = g_outbox.KeyAt(0);
   string name = g_outbox.ValueAt(0);
   string text = "";
   PosCalOutboxEntry entry;
   if(!ReadText(OutboxPath(name), text) || !PosCalParseOutbox(text, entry))
     {
      Print(LOG_PREFIX, "outbox file ", name, " is unreadable and was removed (its deals are queued again)");
      FileDelete(OutboxPath(name), g_file_flags);
      g_ready = false;          // reload what is queued from the files that remain,
      g_reconcile_all = true;   // then queue again whatever that file held
      return false;
     }
   PosCalAccount account;
   ReadAccount(account);
   string headers = "";
   uchar body[];
   if(!PosCalComposeRequest(entry, account, g_key, (long)TimeGMT(), headers, body))
     {
      Print(LOG_PREFIX, "could not sign webhook ", entry.webhook_id, " (error ", GetLastError(), ")");
      return false;
     }
   char data[];
   int size = ArraySize(body);
   ArrayResize(data, size);
   for(int i = 0; i < size; i++)
      data[i] = (char)body[i];
   char result[];
   string result_headers = "";
   ResetLastError();
   int status = WebRequest("POST", PosCalTrimmed(InpIngestUrl), headers, SEND_TIMEOUT_MS, data, result, result_headers);
   if(status == -1)
      return NoAnswer(GetLastError());
   string detail = AnswerText(result);
   long retry_after = PosCalRetryAfterSeconds(result_headers, (long)TimeGMT());
   switch(PosCalClassify(status, retry_after))
     {
      case POSCAL_DELIVERED:
         if(status == 409)
            Print(LOG_PREFIX, "webhook ", entry.webhook_id, " was already received (409): delivered");
         Settle(entry, sequence, name);
         g_failures = 0;
         g_last_result = "delivered " + TimeToString(TimeLocal(), TIME_DATE | TIME_SECONDS);
         return true;
      case POSCAL_REFUSED:
         Print(LOG_PREFIX, "ingest refused webhook ", entry.webhook_id, " (HTTP ", status, ": ", detail,
               "); its deals ", entry.tickets, " are dropped");
         Settle(entry, sequence, name);
         return true;
      case POSCAL_PAUSED:
         Pause(status, detail);
         return false;
      default:
         Retry("HTTP " + IntegerToString(status) + ": " + detail, retry_after);
         return false;
     }
  }

//--- Recorded as sent before the batch file goes: a crash in between resends the batch, and
//--- ingest answers 409 for its id.
void Settle(const PosCalOutboxEntry &entry, const ulong sequence, const string name)
  {
   ulong tickets[];
   string prints[];
   PosCalParseTickets(entry.tickets, tickets);
   PosCalSplit(entry.prints, ',', prints);
   string lines = "";
   for(int i = 0; i < ArraySize(tickets) && i < ArraySize(prints); i++)
     {
      lines += PosCalMapLine(tickets[i], prints[i]);
      g_sent.Put(tickets[i], prints[i]);
      if(g_queued.Holds(tickets[i], prints[i]))
         g_queued.Remove(tickets[i]);
     }
   if(!Append(SentPath(), lines))
      Print(LOG_PREFIX, "cannot append to ", SentPath(), " (error ", GetLastError(), ")");
   FileDelete(OutboxPath(name), g_file_flags);
   g_outbox.Remove(sequence);
  }

bool NoAnswer(const int error)
  {
   if(error == ERR_WEBREQUEST_NOT_ALLOWED)
     {
      if(TimeGMT() - g_last_allow_list_log >= 600)
        {
         string message = "WebRequest is not allowed for " + PosCalUrlOrigin(InpIngestUrl)
                          + ": add it in Tools > Options > Expert Advisors > Allow WebRequest for listed URL";
         Print(LOG_PREFIX, message, " (error 4014); nothing is lost, sending starts once it is added");
         if(g_last_allow_list_log == 0)
            Alert(LOG_PREFIX, message);
         g_last_allow_list_log = TimeGMT();
        }
      g_next_attempt = TimeGMT() + 60;
      g_last_result = "waiting for the WebRequest allow-list entry";
      return false;
     }
   if(error == ERR_WEBREQUEST_BAD_ADDRESS)
     {
      Pause(0, "the Ingest URL is not a valid address");
      return false;
     }
   Retry("no answer (error " + IntegerToString(error) + ")", -1);
   return false;
  }

void Retry(const string why, const long retry_after)
  {
   g_failures++;
   long delay = PosCalBackoffSeconds(g_failures, retry_after, MathRand() / 32768.0);
   g_next_attempt = TimeGMT() + (datetime)delay;
   g_last_result = "retrying: " + why;
   Print(LOG_PREFIX, "ingest: ", why, "; next try in ", delay, " s, ", g_outbox.Count(), " webhooks waiting");
  }

void Pause(const int status, const string detail)
  {
   g_paused = true;
   string advice = "check the Ingest URL input: it must be the connection's webhook URL";
   if(status == 401)
      advice = "check that Webhook secret is the connection's current secret, Ingest URL its webhook URL, and that this computer's clock is right";
   if(status == 423)
      advice = "the connection's operator locked it: once it is unlocked reopen these inputs and press OK, or enter the new secret if it was rotated";
   string message = "sending paused (" + (status > 0 ? "HTTP " + IntegerToString(status) + ": " : "") + detail + "): " + advice
                    + "; nothing is lost, sending resumes when the inputs change";
   Print(LOG_PREFIX, message);
   Alert(LOG_PREFIX, message);
   g_last_result = "paused: " + advice;
  }

//--- The answer's body (ingest's {"error", "detail"}), short enough for a log line.
string AnswerText(const char &result[])
  {
   int size = ArraySize(result);
   if(size > 300)
      size = 300;
   uchar bytes[];
   ArrayResize(bytes, size);
   for(int i = 0; i < size; i++)
      bytes[i] = (uchar)result[i];
   return PosCalFromUtf8(bytes, size);
  }

//+------------------------------------------------------------------+
void CreateResendButton(void)
  {
   if(ObjectFind(0, RESEND_BUTTON) < 0)
      ObjectCreate(0, RESEND_BUTTON, OBJ_BUTTON, 0, 0, 0);
   ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_CORNER, CORNER_LEFT_LOWER);
   ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_XDISTANCE, 10);
   ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_YDISTANCE, 40);
   ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_XSIZE, 170);
   ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_YSIZE, 24);
   ObjectSetString(0, RESEND_BUTTON, OBJPROP_TEXT, "PosCal: resend history");
   ObjectSetInteger(0, RESEND_BUTTON, OBJPROP_STATE, false);
  }

void ShowStatus(void)
  {
   Comment("PosCalSync: ", g_outbox.Count(), " webhooks waiting, ", g_sent.Count(), " deals sent",
           (g_last_result == "" ? "" : "; " + g_last_result));
  }
//+------------------------------------------------------------------+
