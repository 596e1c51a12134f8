#include <stdlib.h>
#include "common.h"

struct node *list_push(struct node *head, long value)
{
    struct node *n = malloc(sizeof *n);
    if (!n)
        abort();
    n->value = value;
    n->next = head;
    return n;
}

long list_sum(const struct node *head)
{
    long s = 0;
    for (; head; head = head->next)
        s += head->value;
    return s;
}

void list_free(struct node *head)
{
    while (head) {
        struct node *next = head->next;
        free(head);
        head = next;
    }
}
