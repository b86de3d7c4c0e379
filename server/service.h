/* The service's commands: serve (API and workers), worker (workers only), apikey, routes. */
#ifndef RT_SERVICE_H
#define RT_SERVICE_H

#include <stdbool.h>

int cmd_serve(int argc, char **argv, bool http, bool workers);
int cmd_apikey(int argc, char **argv);
int cmd_routes(void);

#endif
