// mql5_compat.h: the MQL5 built-ins the pure PosCal .mqh files use, so those files compile
// unchanged under g++ for tests. Only what they use, with MQL5's documented behaviour:
// strings are UTF-16, StringToCharArray copies the terminating NUL, an array index out of
// range stops the program (as the terminal stops an EA). Anything else the files might ask
// of a built-in is refused loudly rather than approximated.
#ifndef POSCAL_MQL5_COMPAT_H
#define POSCAL_MQL5_COMPAT_H

#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define POSCAL_OFF_TERMINAL 1

typedef unsigned char uchar;
typedef uint16_t ushort;
typedef unsigned int uint;
typedef uint64_t ulong;

[[noreturn]] inline void MqlFatal(const char *what) {
    std::fprintf(stderr, "mql5_compat: %s\n", what);
    std::abort();
}

// ---- dynamic arrays ------------------------------------------------------------------------

template <typename T>
class MqlArray {
  public:
    std::vector<T> items;
    T &operator[](int index) {
        if (index < 0 || index >= (int)items.size()) MqlFatal("array out of range");
        return items[(size_t)index];
    }
    const T &operator[](int index) const {
        if (index < 0 || index >= (int)items.size()) MqlFatal("array out of range");
        return items[(size_t)index];
    }
};

#define IN_ARRAY(T, name) const MqlArray<T> &name
#define OUT_ARRAY(T, name) MqlArray<T> &name
#define ARRAY(T, name) MqlArray<T> name

#define WHOLE_ARRAY (-1)

template <typename T>
int ArraySize(const MqlArray<T> &array) {
    return (int)array.items.size();
}

template <typename T>
int ArrayResize(MqlArray<T> &array, int new_size, int reserve_size = 0) {
    if (new_size < 0) return -1;
    if (reserve_size > 0) array.items.reserve((size_t)new_size + (size_t)reserve_size);
    array.items.resize((size_t)new_size);
    return new_size;
}

template <typename T>
void ArrayFree(MqlArray<T> &array) {
    array.items.clear();
}

// Copies `count` elements (all the rest for WHOLE_ARRAY); a dynamic destination grows.
template <typename T>
int ArrayCopy(MqlArray<T> &dst, const MqlArray<T> &src, int dst_start = 0, int src_start = 0,
              int count = WHOLE_ARRAY) {
    int available = (int)src.items.size() - src_start;
    if (src_start < 0 || dst_start < 0 || available < 0) return 0;
    if (count < 0 || count > available) count = available;
    if ((int)dst.items.size() < dst_start + count) dst.items.resize((size_t)(dst_start + count));
    for (int i = 0; i < count; i++) dst.items[(size_t)(dst_start + i)] = src.items[(size_t)(src_start + i)];
    return count;
}

// ---- strings: UTF-16 like MQL5's -----------------------------------------------------------

#define CP_ACP 0
#define CP_UTF8 65001

inline std::u16string MqlUtf8ToUtf16(const unsigned char *bytes, size_t size) {
    // As Windows decodes: each malformed sequence becomes U+FFFD.
    std::u16string out;
    size_t i = 0;
    while (i < size) {
        unsigned c = bytes[i];
        unsigned code = 0;
        int extra = 0;
        if (c < 0x80) {
            code = c;
        } else if ((c & 0xE0) == 0xC0) {
            code = c & 0x1F, extra = 1;
        } else if ((c & 0xF0) == 0xE0) {
            code = c & 0x0F, extra = 2;
        } else if ((c & 0xF8) == 0xF0) {
            code = c & 0x07, extra = 3;
        } else {
            out += (char16_t)0xFFFD, i++;
            continue;
        }
        bool ok = true;
        for (int k = 1; k <= extra; k++) {
            if (i + (size_t)k >= size || (bytes[i + (size_t)k] & 0xC0) != 0x80) {
                ok = false;
                break;
            }
            code = (code << 6) | (bytes[i + (size_t)k] & 0x3F);
        }
        static const unsigned minimum[] = {0, 0x80, 0x800, 0x10000};
        if (!ok || code < minimum[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
            out += (char16_t)0xFFFD, i++;
            continue;
        }
        if (code >= 0x10000) {
            code -= 0x10000;
            out += (char16_t)(0xD800 + (code >> 10));
            out += (char16_t)(0xDC00 + (code & 0x3FF));
        } else {
            out += (char16_t)code;
        }
        i += (size_t)extra + 1;
    }
    return out;
}

inline std::string MqlUtf16ToUtf8(const std::u16string &text) {
    // As Windows encodes: a lone surrogate becomes U+FFFD.
    std::string out;
    for (size_t i = 0; i < text.size(); i++) {
        unsigned code = text[i];
        if (code >= 0xD800 && code <= 0xDBFF && i + 1 < text.size() && text[i + 1] >= 0xDC00 &&
            text[i + 1] <= 0xDFFF) {
            code = 0x10000 + ((code - 0xD800) << 10) + (text[i + 1] - 0xDC00);
            i++;
        } else if (code >= 0xD800 && code <= 0xDFFF) {
            code = 0xFFFD;
        }
        if (code < 0x80) {
            out += (char)code;
        } else if (code < 0x800) {
            out += (char)(0xC0 | (code >> 6));
            out += (char)(0x80 | (code & 0x3F));
        } else if (code < 0x10000) {
            out += (char)(0xE0 | (code >> 12));
            out += (char)(0x80 | ((code >> 6) & 0x3F));
            out += (char)(0x80 | (code & 0x3F));
        } else {
            out += (char)(0xF0 | (code >> 18));
            out += (char)(0x80 | ((code >> 12) & 0x3F));
            out += (char)(0x80 | ((code >> 6) & 0x3F));
            out += (char)(0x80 | (code & 0x3F));
        }
    }
    return out;
}

class string {
  public:
    std::u16string units;
    string() {}
    string(const char *utf8) {
        if (utf8 != nullptr) units = MqlUtf8ToUtf16((const unsigned char *)utf8, std::strlen(utf8));
    }
    explicit string(const std::u16string &text) : units(text) {}
    string &operator+=(const string &other) {
        units += other.units;
        return *this;
    }
    bool operator==(const string &other) const { return units == other.units; }
    bool operator!=(const string &other) const { return units != other.units; }
    std::string utf8() const { return MqlUtf16ToUtf8(units); }
};

inline string operator+(const string &a, const string &b) {
    string joined = a;
    joined += b;
    return joined;
}
inline string operator+(const char *a, const string &b) { return string(a) + b; }
inline string operator+(const string &a, const char *b) { return a + string(b); }
inline bool operator==(const string &a, const char *b) { return a == string(b); }
inline bool operator!=(const string &a, const char *b) { return a != string(b); }

inline int StringLen(const string &text) { return (int)text.units.size(); }

inline ushort StringGetCharacter(const string &text, int pos) {
    if (pos < 0 || pos >= (int)text.units.size()) return 0;
    return text.units[(size_t)pos];
}

inline string StringSubstr(const string &text, int start, int length = -1) {
    int size = (int)text.units.size();
    if (start < 0 || start >= size) return string();
    if (length < 0 || length > size - start) length = size - start;
    return string(text.units.substr((size_t)start, (size_t)length));
}

inline string ShortToString(ushort symbol_code) { return string(std::u16string(1, (char16_t)symbol_code)); }

// Converts the whole string (count -1, the only form the pure files use) and, as MQL5 does,
// copies the terminating NUL too, growing a dynamic array to fit; returns elements copied.
inline int StringToCharArray(const string &text, MqlArray<uchar> &array, int start = 0, int count = -1,
                             uint codepage = CP_ACP) {
    if (codepage != CP_UTF8) MqlFatal("StringToCharArray: only CP_UTF8 is implemented");
    if (count != -1) MqlFatal("StringToCharArray: only count -1 is implemented");
    std::string bytes = MqlUtf16ToUtf8(text.units);
    size_t needed = (size_t)start + bytes.size() + 1;
    if (array.items.size() < needed) array.items.resize(needed);
    for (size_t i = 0; i < bytes.size(); i++) array.items[(size_t)start + i] = (uchar)bytes[i];
    array.items[(size_t)start + bytes.size()] = 0;
    return (int)bytes.size() + 1;
}

// Converts `count` bytes from `start` (count -1: up to the first NUL or the end).
inline string CharArrayToString(const MqlArray<uchar> &array, int start = 0, int count = -1,
                                uint codepage = CP_ACP) {
    if (codepage != CP_UTF8) MqlFatal("CharArrayToString: only CP_UTF8 is implemented");
    int size = (int)array.items.size();
    if (start < 0 || start > size) return string();
    int end = (count < 0 || start + count > size) ? size : start + count;
    if (count < 0)
        for (int i = start; i < end; i++)
            if (array.items[(size_t)i] == 0) {
                end = i;
                break;
            }
    return string(MqlUtf8ToUtf16(array.items.data() + start, (size_t)(end - start)));
}

// ---- numbers -------------------------------------------------------------------------------

inline bool MathIsValidNumber(double value) { return std::isfinite(value); }

// digits 0..16: fixed point with that many decimals; -1..-16: exponent form with that many.
inline string DoubleToString(double value, int digits = 8) {
    char text[512];
    if (digits >= 0 && digits <= 16)
        std::snprintf(text, sizeof text, "%.*f", digits, value);
    else if (digits <= -1 && digits >= -16)
        std::snprintf(text, sizeof text, "%.*e", -digits, value);
    else
        MqlFatal("DoubleToString: digits out of range");
    return string(text);
}

inline double StringToDouble(const string &text) { return std::strtod(text.utf8().c_str(), nullptr); }

// ---- CryptEncode: SHA-256 only (FIPS 180-4, written out here) ------------------------------

enum ENUM_CRYPT_METHOD {
    CRYPT_BASE64,
    CRYPT_AES128,
    CRYPT_AES256,
    CRYPT_DES,
    CRYPT_HASH_SHA1,
    CRYPT_HASH_SHA256,
    CRYPT_HASH_MD5,
    CRYPT_ARCH_ZIP,
};

inline void MqlSha256(const uchar *data, size_t size, uchar digest[32]) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::vector<uchar> message(data, data + size);
    message.push_back(0x80);
    while (message.size() % 64 != 56) message.push_back(0);
    uint64_t bits = (uint64_t)size * 8;
    for (int i = 7; i >= 0; i--) message.push_back((uchar)(bits >> (i * 8)));
    auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
    for (size_t block = 0; block < message.size(); block += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)message[block + (size_t)i * 4] << 24 | (uint32_t)message[block + (size_t)i * 4 + 1] << 16 |
                   (uint32_t)message[block + (size_t)i * 4 + 2] << 8 | (uint32_t)message[block + (size_t)i * 4 + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
    }
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) digest[i * 4 + j] = (uchar)(h[i] >> (24 - j * 8));
}

// Returns the bytes in `result`, or 0 on error (MQL5's contract).
inline int CryptEncode(ENUM_CRYPT_METHOD method, const MqlArray<uchar> &data, const MqlArray<uchar> &key,
                       MqlArray<uchar> &result) {
    (void)key;  // hashes take no key
    if (method != CRYPT_HASH_SHA256) MqlFatal("CryptEncode: only CRYPT_HASH_SHA256 is implemented");
    result.items.resize(32);
    MqlSha256(data.items.data(), data.items.size(), result.items.data());
    return 32;
}

#endif
