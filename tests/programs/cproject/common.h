#ifndef COMMON_H
#define COMMON_H
#include <stddef.h>
#include <stdint.h>

struct node { long value; struct node *next; };

uint32_t fnv1a(const char *s, size_t n);
struct node *list_push(struct node *head, long value);
long list_sum(const struct node *head);
void list_free(struct node *head);
int util_clamp(int x, int lo, int hi);
#endif
