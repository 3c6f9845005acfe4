/*
 * tests/unit/metric_value.h — a metric's value read the way a scraper reads it: from the
 * registry's exposition text, the line that starts with the series (its name, with its labels
 * if it has any) and a space. Header-only (a static function): include it in one test file each.
 */
#ifndef CAIRN_TESTS_METRIC_VALUE_H
#define CAIRN_TESTS_METRIC_VALUE_H

#include <stdlib.h>
#include <string.h>

#include "common/metrics.h"

/* The value of series (e.g. 'name' or 'name{reason="nan"}') in m's text, or -1 if absent. */
static double metric_value(cairn_metrics *m, const char *series)
{
    char *text = NULL;
    if (cairn_metrics_render(m, &text, NULL) != 0) return -1;
    const size_t n = strlen(series);
    double v = -1;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (!strncmp(line, series, n) && line[n] == ' ') v = strtod(line + n + 1, NULL);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return v;
}

#endif
