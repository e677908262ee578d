// harness.cpp: a command line over the Expert Advisor's pure .mqh code, compiled with g++
// through mql5_compat.h, so tests/ can hold that code to test vectors and to the real ingest.
// Binary values travel as hex; strings as hex of their UTF-16 units (MQL5 strings are UTF-16,
// and a lone surrogate has no UTF-8 form); doubles as decimal text read by strtod.
#include "mql5_compat.h"

#include <PosCal/Request.mqh>
#include <PosCal/Delivery.mqh>
#include <PosCal/SortedMap.mqh>

#include <iostream>
#include <sstream>

namespace {

int Fail(const std::string &why) {
    std::cerr << "harness: " << why << "\n";
    return 2;
}

MqlArray<uchar> FromHex(const std::string &hex) {
    if (hex.size() % 2 != 0) MqlFatal("odd hex");
    MqlArray<uchar> bytes;
    for (size_t i = 0; i < hex.size(); i += 2) bytes.items.push_back((uchar)std::stoul(hex.substr(i, 2), nullptr, 16));
    return bytes;
}

std::string ToHex(const MqlArray<uchar> &bytes) { return PosCalHex(bytes, ArraySize(bytes)).utf8(); }

std::string Utf8Hex(const string &text) {
    MqlArray<uchar> bytes;
    PosCalUtf8(text, bytes);
    return ToHex(bytes);
}

// "-" is the empty string; otherwise hex of UTF-16 code units, four digits each.
string FromU16Hex(const std::string &hex) {
    std::u16string units;
    if (hex != "-") {
        if (hex.size() % 4 != 0) MqlFatal("UTF-16 hex needs four digits a unit");
        for (size_t i = 0; i < hex.size(); i += 4) units += (char16_t)std::stoul(hex.substr(i, 4), nullptr, 16);
    }
    return string(units);
}

double Number(const std::string &text) { return std::strtod(text.c_str(), nullptr); }

// Reads the request spec on stdin (see tests/support/mt5_ea.py) and prints, per batch, the
// outbox entry's file text and the request it becomes, as the EA builds them.
int Requests(std::istream &in) {
    std::string secret;
    long timestamp = 0, offset = 0, login = 0;
    int batch_size = 100, max_bytes = POSCAL_MAX_DEALS_BYTES;
    PosCalAccount account{};
    MqlArray<ulong> tickets;
    MqlArray<string> deal_json;
    MqlArray<string> prints;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string kind;
        words >> kind;
        if (kind == "secret") {
            words >> secret;
        } else if (kind == "timestamp") {
            words >> timestamp;
        } else if (kind == "offset") {
            words >> offset;
        } else if (kind == "batch") {
            words >> batch_size >> max_bytes;
        } else if (kind == "account") {
            std::string server, currency, balance, equity;
            words >> login >> server >> currency >> balance >> equity;
            account.login = login;
            account.server = FromU16Hex(server);
            account.currency = FromU16Hex(currency);
            account.balance = Number(balance);
            account.equity = Number(equity);
        } else if (kind == "deal") {
            PosCalDeal deal{};
            std::string volume, price, commission, swap, profit, fee, symbol, comment, external_id;
            words >> deal.ticket >> deal.order >> deal.time >> deal.time_msc >> deal.type >> deal.entry >>
                deal.magic >> deal.position_id >> deal.reason >> volume >> price >> commission >> swap >> profit >>
                fee >> symbol >> comment >> external_id;
            if (!words) return Fail("a deal line needs 18 fields");
            deal.volume = Number(volume), deal.price = Number(price), deal.commission = Number(commission);
            deal.swap = Number(swap), deal.profit = Number(profit), deal.fee = Number(fee);
            deal.symbol = FromU16Hex(symbol), deal.comment = FromU16Hex(comment);
            deal.external_id = FromU16Hex(external_id);
            tickets.items.push_back(deal.ticket);
            deal_json.items.push_back(PosCalDealJson(deal));
            prints.items.push_back(PosCalDealFingerprint(deal_json.items.back()));
        } else if (!kind.empty()) {
            return Fail("unknown spec line: " + kind);
        }
    }
    MqlArray<uchar> key;
    string reason;
    if (!PosCalDecodeSecret(secret.c_str(), key, reason)) return Fail(reason.utf8());
    ulong sequence = 1;
    for (int start = 0; start < ArraySize(deal_json);) {
        int end = PosCalBatchEnd(deal_json, start, batch_size, max_bytes);
        PosCalOutboxEntry queued;
        PosCalMakeEntry(login, tickets, prints, deal_json, start, end, offset, sequence++, queued);
        // As after a restart: the entry is what its file says.
        string file_text = PosCalOutboxText(queued);
        PosCalOutboxEntry entry;
        if (!PosCalParseOutbox(file_text, entry)) return Fail("an outbox entry did not read back");
        string headers;
        MqlArray<uchar> body;
        if (!PosCalComposeRequest(entry, account, key, timestamp, headers, body)) return Fail("signing failed");
        std::cout << "file " << PosCalOutboxFileName(entry.sequence).utf8() << "\n"
                  << "outbox " << Utf8Hex(file_text) << "\n"
                  << "headers " << Utf8Hex(headers) << "\n"
                  << "body " << ToHex(body) << "\n";
        start = end;
    }
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    std::string command = argc > 1 ? argv[1] : "";
    auto arg = [&](int i) { return i < argc ? std::string(argv[i]) : std::string(); };
    if (command == "sha256") {
        MqlArray<uchar> digest;
        if (!PosCalSha256(FromHex(arg(2)), digest)) return Fail("hashing failed");
        std::cout << ToHex(digest) << "\n";
    } else if (command == "hmac") {
        MqlArray<uchar> mac;
        if (!PosCalHmacSha256(FromHex(arg(2)), FromHex(arg(3)), mac)) return Fail("hashing failed");
        std::cout << ToHex(mac) << "\n";
    } else if (command == "base64-encode") {
        MqlArray<uchar> data = FromHex(arg(2));
        std::cout << PosCalBase64Encode(data, ArraySize(data)).utf8() << "\n";
    } else if (command == "base64-decode") {
        MqlArray<uchar> data;
        std::cout << (PosCalBase64Decode(FromU16Hex(arg(2)), data) ? ToHex(data) : "invalid") << "\n";
    } else if (command == "secret") {
        MqlArray<uchar> key;
        string reason;
        bool ok = PosCalDecodeSecret(FromU16Hex(arg(2)), key, reason);
        std::cout << (ok ? "key " + ToHex(key) : "refused " + reason.utf8()) << "\n";
    } else if (command == "sign") {
        MqlArray<uchar> key;
        string reason;
        if (!PosCalDecodeSecret(arg(2).c_str(), key, reason)) return Fail(reason.utf8());
        std::cout << PosCalSignature(key, arg(3).c_str(), std::stol(arg(4)), FromHex(arg(5))).utf8() << "\n";
    } else if (command == "json-string") {
        std::cout << Utf8Hex(PosCalJsonString(FromU16Hex(arg(2)))) << "\n";
    } else if (command == "json-number") {
        std::cout << PosCalJsonNumber(Number(arg(2))).utf8() << "\n";
    } else if (command == "utf8-length") {
        std::cout << PosCalUtf8Length(FromU16Hex(arg(2))) << "\n";
    } else if (command == "webhook-id") {
        MqlArray<ulong> tickets;
        for (int i = 4; i < argc; i++) tickets.items.push_back(std::stoull(argv[i]));
        std::cout << PosCalWebhookId(std::stol(arg(2)), tickets, FromU16Hex(arg(3))).utf8() << "\n";
    } else if (command == "classify") {
        // classify STATUS [RETRY_AFTER_SECONDS]: -1 (none) unless given
        long retry_after = argc > 3 ? std::stol(arg(3)) : -1;
        std::cout << PosCalOutcomeName(PosCalClassify(std::stoi(arg(2)), retry_after)).utf8() << "\n";
    } else if (command == "backoff") {
        std::cout << PosCalBackoffSeconds(std::stoi(arg(2)), std::stol(arg(3)), Number(arg(4))) << "\n";
    } else if (command == "retry-after") {
        std::cout << PosCalRetryAfterSeconds(FromU16Hex(arg(2)), std::stol(arg(3))) << "\n";
    } else if (command == "outbox-parse") {
        MqlArray<uchar> bytes = FromHex(arg(2));
        PosCalOutboxEntry entry;
        if (PosCalParseOutbox(PosCalFromUtf8(bytes, ArraySize(bytes)), entry))
            std::cout << "entry " << entry.sequence << " " << entry.webhook_id.utf8() << " " << entry.offset_seconds
                      << " " << entry.tickets.utf8() << "\n";
        else
            std::cout << "invalid\n";
    } else if (command == "map-load") {
        MqlArray<uchar> bytes = FromHex(arg(2));
        PosCalSortedMap map;
        int skipped = map.Load(PosCalFromUtf8(bytes, ArraySize(bytes)));
        std::cout << "skipped " << skipped << "\n" << map.Text().utf8();
    } else if (command == "check-url") {
        string reason;
        bool ok = PosCalCheckUrl(arg(2).c_str(), reason);
        std::cout << (ok ? std::string("ok") : "refused " + reason.utf8()) << " "
                  << PosCalUrlOrigin(arg(2).c_str()).utf8() << "\n";
    } else if (command == "needs-sending") {
        // needs-sending SENT_HEX QUEUED_HEX TICKET PRINT RESEND_ALL: the two maps as ledger text
        MqlArray<uchar> sent_bytes = FromHex(arg(2)), queued_bytes = FromHex(arg(3));
        PosCalSortedMap sent, queued;
        sent.Load(PosCalFromUtf8(sent_bytes, ArraySize(sent_bytes)));
        queued.Load(PosCalFromUtf8(queued_bytes, ArraySize(queued_bytes)));
        bool needed = PosCalNeedsSending(sent, queued, std::stoull(arg(4)), arg(5).c_str(), arg(6) == "1");
        std::cout << (needed ? "queue" : "skip") << "\n";
    } else if (command == "state-folder") {
        std::cout << PosCalStateFolder(std::stol(arg(2)), arg(3).c_str()).utf8() << "\n";
    } else if (command == "requests") {
        return Requests(std::cin);
    } else {
        return Fail("unknown command: " + command);
    }
    return 0;
}
