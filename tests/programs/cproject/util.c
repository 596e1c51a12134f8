#include "common.h"

int util_clamp(int x, int lo, int hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}
