//+------------------------------------------------------------------+
//| Webhook.mqh: Standard Webhooks v1 signing, the request headers,   |
//| and webhook ids that name a batch of deals, so a resend of the    |
//| same deals is the same id (ingest answers it 409: delivered).     |
//+------------------------------------------------------------------+
#ifndef POSCAL_WEBHOOK_MQH
#define POSCAL_WEBHOOK_MQH

#include "Platform.mqh"
#include "Text.mqh"
#include "Base64.mqh"
#include "Hmac.mqh"

#define POSCAL_SECRET_PREFIX "whsec_"

//--- The signing key of a `whsec_...` secret: the base64 after the prefix (the prefix is
//--- optional, surrounding spaces from a paste are ignored). False with the reason otherwise;
//--- the reason never quotes the secret.
bool PosCalDecodeSecret(const string secret, OUT_ARRAY(uchar, key), string &reason)
  {
   ArrayResize(key, 0);
   string text = PosCalTrimmed(secret);
   int prefix = StringLen(POSCAL_SECRET_PREFIX);
   if(StringLen(text) >= prefix && StringSubstr(text, 0, prefix) == POSCAL_SECRET_PREFIX)
      text = PosCalSlice(text, prefix, StringLen(text) - prefix);
   if(StringLen(text) == 0)
     {
      reason = "the secret is empty: paste the connection's webhook secret (whsec_...)";
      return false;
     }
   if(!PosCalBase64Decode(text, key) || ArraySize(key) == 0)
     {
      ArrayResize(key, 0);
      reason = "the secret is not a valid webhook secret: paste it again exactly as it was shown (whsec_...)";
      return false;
     }
   reason = "";
   return true;
  }

#define POSCAL_WEBHOOK_PATH "/v1/webhooks/mt5/"

//--- Whether `url` is a connection's webhook URL (http(s)://host/v1/webhooks/mt5/<id>); false
//--- with what is wrong otherwise.
bool PosCalCheckUrl(const string url, string &reason)
  {
   string lowered = PosCalAsciiLower(PosCalTrimmed(url));
   int scheme = 0;
   if(StringSubstr(lowered, 0, 8) == "https://")
      scheme = 8;
   else
      if(StringSubstr(lowered, 0, 7) == "http://")
         scheme = 7;
   if(scheme == 0)
     {
      reason = "the Ingest URL must start with https:// : paste the connection's webhook URL";
      return false;
     }
   int path = -1;
   int marker = StringLen(POSCAL_WEBHOOK_PATH);
   for(int i = scheme; i + marker <= StringLen(lowered) && path < 0; i++)
      if(StringSubstr(lowered, i, marker) == POSCAL_WEBHOOK_PATH)
         path = i;
   if(path <= scheme || path + marker >= StringLen(lowered))
     {
      reason = "the Ingest URL must be the connection's webhook URL, https://<host>/v1/webhooks/mt5/<connection id>";
      return false;
     }
   reason = "";
   return true;
  }

//--- The scheme and host (with any port) of a URL: what the terminal's WebRequest allow-list
//--- needs.
string PosCalUrlOrigin(const string url)
  {
   string text = PosCalTrimmed(url);
   int units = StringLen(text);
   int start = 0;
   for(int i = 0; i + 2 < units; i++)
      if(StringSubstr(text, i, 3) == "://")
        {
         start = i + 3;
         break;
        }
   int end = start;
   while(end < units && StringGetCharacter(text, end) != '/')
      end++;
   return PosCalSlice(text, 0, end);
  }

//--- `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` over the exact body bytes sent.
//--- Empty if hashing failed.
string PosCalSignature(IN_ARRAY(uchar, key), const string webhook_id, const long timestamp,
                       IN_ARRAY(uchar, body))
  {
   ARRAY(uchar, content);
   PosCalUtf8(webhook_id + "." + PosCalLongText(timestamp) + ".", content);
   PosCalAppendBytes(content, body);
   ARRAY(uchar, mac);
   if(!PosCalHmacSha256(key, content, mac))
      return "";
   return "v1," + PosCalBase64Encode(mac, ArraySize(mac));
  }

//--- The headers for WebRequest: "name: value" lines, each ended by CRLF.
string PosCalRequestHeaders(const string webhook_id, const long timestamp, const string signature,
                            const string user_agent)
  {
   string headers = "content-type: application/json\r\n";
   headers += "user-agent: " + user_agent + "\r\n";
   headers += "webhook-id: " + webhook_id + "\r\n";
   headers += "webhook-timestamp: " + PosCalLongText(timestamp) + "\r\n";
   headers += "webhook-signature: " + signature + "\r\n";
   return headers;
  }

//--- `mt5-{login}-{lowest ticket}-{highest ticket}-{count}-{digest}`, where the digest is of the
//--- deals' JSON exactly as sent: the same deals are the same id however often they are sent,
//--- while a deal the server changed afterwards (a cancellation re-types it) is a new id that
//--- ingest accepts instead of answering 409.
string PosCalWebhookId(const long login, IN_ARRAY(ulong, tickets), const string deals_json)
  {
   int count = ArraySize(tickets);
   ulong lowest = 0;
   ulong highest = 0;
   for(int i = 0; i < count; i++)
     {
      if(i == 0 || tickets[i] < lowest)
         lowest = tickets[i];
      if(i == 0 || tickets[i] > highest)
         highest = tickets[i];
     }
   return "mt5-" + PosCalLongText(login) + "-" + PosCalULongText(lowest) + "-" + PosCalULongText(highest)
          + "-" + PosCalLongText(count) + "-" + PosCalDigestHex(deals_json, 16);
  }

#endif
