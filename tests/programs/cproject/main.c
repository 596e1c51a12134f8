#include <stdio.h>
#include "common.h"

int main(void)
{
    struct node *l = NULL;
    for (long i = 1; i <= 1000; i++)
        l = list_push(l, i);
    printf("sum %ld\n", list_sum(l));
    printf("hash %u\n", (unsigned)fnv1a("", 0));
    printf("clamp %d\n", util_clamp(42, 0, 10));
    list_free(l);
    return 0;
}
