//+------------------------------------------------------------------+
//| Delivery.mqh: what an answer from ingest means for a batch, how   |
//| long to wait before the next try, and the Retry-After header.     |
//+------------------------------------------------------------------+
#ifndef POSCAL_DELIVERY_MQH
#define POSCAL_DELIVERY_MQH

#include "Platform.mqh"
#include "Text.mqh"

enum PosCalOutcome
  {
   POSCAL_DELIVERED,  // 2xx, or 409: ingest already accepted this webhook id
   POSCAL_RETRY,      // the network, 408, 429, 5xx, 403 (live not enabled yet), 423 with a
                      // Retry-After (its user paused the connection): try again later
   POSCAL_PAUSED,     // the URL or the secret is wrong, or an operator locked the connection
                      // (401, 404, 405, 423 without Retry-After, 3xx): nothing more is sent until
                      // the inputs change, and no batch is dropped
   POSCAL_REFUSED     // any other 4xx: this batch itself is refused; logged with the reason, dropped
  };

//--- `status` is WebRequest's result: the HTTP status, or -1 when no answer came;
//--- `retry_after_seconds` the answer's Retry-After (PosCalRetryAfterSeconds), -1 when none.
PosCalOutcome PosCalClassify(const int status, const long retry_after_seconds)
  {
   if(status >= 200 && status < 300)
      return POSCAL_DELIVERED;
   if(status == 409)
      return POSCAL_DELIVERED;
   if(status == 408 || status == 429 || status == 403)
      return POSCAL_RETRY;
   // A paused connection (423 with Retry-After) is resumed by its user without anything
   // changing here: the batch waits in the outbox and is sent again then.
   if(status == 423 && retry_after_seconds >= 0)
      return POSCAL_RETRY;
   // A wrong secret, URL or clock (401) does not fix itself, and retrying it only gets this
   // address throttled (429); 423 alone is an operator's lock, which a retry cannot lift either.
   if(status == 401 || status == 404 || status == 405 || status == 423)
      return POSCAL_PAUSED;
   if(status >= 300 && status < 400)
      return POSCAL_PAUSED;
   if(status >= 400 && status < 500)
      return POSCAL_REFUSED;
   return POSCAL_RETRY;
  }

string PosCalOutcomeName(const PosCalOutcome outcome)
  {
   switch(outcome)
     {
      case POSCAL_DELIVERED:
         return "delivered";
      case POSCAL_RETRY:
         return "retry";
      case POSCAL_PAUSED:
         return "paused";
      case POSCAL_REFUSED:
         return "refused";
     }
   return "unknown";
  }

#define POSCAL_BACKOFF_FIRST_SECONDS 15
#define POSCAL_BACKOFF_CAP_SECONDS   3600
#define POSCAL_RETRY_AFTER_CAP_SECONDS 86400

//--- Seconds to wait after the `failures`-th failure in a row: 15 s doubling up to an hour,
//--- spread by -20 %..+20 % with `jitter` in [0, 1) so terminals that lost the same network do
//--- not come back in step, and never sooner than the server's Retry-After (at most a day; -1
//--- when there was none).
long PosCalBackoffSeconds(const int failures, const long retry_after_seconds, const double jitter)
  {
   long delay = POSCAL_BACKOFF_FIRST_SECONDS;
   for(int i = 1; i < failures && delay < POSCAL_BACKOFF_CAP_SECONDS; i++)
      delay *= 2;
   if(delay > POSCAL_BACKOFF_CAP_SECONDS)
      delay = POSCAL_BACKOFF_CAP_SECONDS;
   double spread = jitter < 0.0 ? 0.0 : (jitter >= 1.0 ? 1.0 : jitter);
   long spread_delay = (long)(delay * (0.8 + 0.4 * spread));
   long server_delay = retry_after_seconds;
   if(server_delay > POSCAL_RETRY_AFTER_CAP_SECONDS)
      server_delay = POSCAL_RETRY_AFTER_CAP_SECONDS;
   return server_delay > spread_delay ? server_delay : spread_delay;
  }

//--- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
long PosCalDaysFromCivil(const long year, const long month, const long day)
  {
   long y = month <= 2 ? year - 1 : year;
   long era = (y >= 0 ? y : y - 399) / 400;
   long year_of_era = y - era * 400;
   long day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
   long day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
   return era * 146097 + day_of_era - 719468;
  }

//--- An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as Unix seconds, or -1.
long PosCalHttpDate(const string text)
  {
   if(StringLen(text) != 29 || StringGetCharacter(text, 3) != ',' || StringSubstr(text, 25, 4) != " GMT")
      return -1;
   string months = "JanFebMarAprMayJunJulAugSepOctNovDec";
   string month_name = StringSubstr(text, 8, 3);
   long month = -1;
   for(int m = 0; m < 12; m++)
      if(StringSubstr(months, m * 3, 3) == month_name)
         month = m + 1;
   long day = PosCalDigits(text, 5, 2);
   long year = PosCalDigits(text, 12, 4);
   long hour = PosCalDigits(text, 17, 2);
   long minute = PosCalDigits(text, 20, 2);
   long second = PosCalDigits(text, 23, 2);
   if(month < 0 || day < 1 || day > 31 || year < 1970 || hour < 0 || hour > 23 || minute < 0
      || minute > 59 || second < 0 || second > 60)
      return -1;
   if(StringGetCharacter(text, 4) != ' ' || StringGetCharacter(text, 7) != ' '
      || StringGetCharacter(text, 11) != ' ' || StringGetCharacter(text, 16) != ' '
      || StringGetCharacter(text, 19) != ':' || StringGetCharacter(text, 22) != ':')
      return -1;
   return PosCalDaysFromCivil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
  }

//--- The wait a response's Retry-After asks for, in seconds from `now_gmt`, or -1 when the
//--- headers (WebRequest's result_headers: "Name: value" lines) have none that can be read.
//--- Both forms are read: delay-seconds and an HTTP date (a date in the past is 0).
long PosCalRetryAfterSeconds(const string headers, const long now_gmt)
  {
   ARRAY(string, lines);
   int count = PosCalSplit(headers, '\n', lines);
   for(int i = 0; i < count; i++)
     {
      string line = lines[i];
      int colon = -1;
      for(int j = 0; j < StringLen(line) && colon < 0; j++)
         if(StringGetCharacter(line, j) == ':')
            colon = j;
      if(colon <= 0)
         continue;
      if(PosCalAsciiLower(PosCalTrimmed(PosCalSlice(line, 0, colon))) != "retry-after")
         continue;
      string value = PosCalTrimmed(PosCalSlice(line, colon + 1, StringLen(line) - colon - 1));
      long seconds = PosCalDigits(value, 0, StringLen(value));
      if(seconds >= 0)
         return seconds;
      long date = PosCalHttpDate(value);
      if(date >= 0)
         return date > now_gmt ? date - now_gmt : 0;
      return -1;
     }
   return -1;
  }

#endif
