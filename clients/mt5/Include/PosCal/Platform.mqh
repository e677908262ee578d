//+------------------------------------------------------------------+
//| Platform.mqh: how the pure PosCal files declare arrays.           |
//| MQL5 declares a dynamic array as `uchar bytes[]` and takes one by  |
//| reference as `uchar &bytes[]`, neither of which is C++. These     |
//| three macros are the only thing the pure files use beyond plain   |
//| MQL5, so the same files compile unchanged under g++ for the tests |
//| (clients/mt5/tests/mql5_compat.h defines them there).             |
//+------------------------------------------------------------------+
#ifndef POSCAL_PLATFORM_MQH
#define POSCAL_PLATFORM_MQH

#ifndef POSCAL_OFF_TERMINAL
#define IN_ARRAY(T, name)    const T &name[]
#define OUT_ARRAY(T, name)   T &name[]
#define ARRAY(T, name)       T name[]
#endif

#endif
