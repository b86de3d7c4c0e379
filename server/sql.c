#include "sql.h"

#define RT_SQL_ENTRY(id, text) {#id, text},
const rt_sql_stmt rt_sql[RT_SQL_COUNT] = {RT_SQL_LIST(RT_SQL_ENTRY)};
