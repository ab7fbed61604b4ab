/* hp_error.c — messages for the HP_ERRNO_MAP codes and for -errno. */
#include <string.h>

#include "hp_error.h"

const char *hp_strerror(int err)
{
  switch (-err) {
#define HP_ERROR_MSG_(name, code, msg) \
  case code: return msg;
    HP_ERRNO_MAP(HP_ERROR_MSG_)
#undef HP_ERROR_MSG_
  default: break;
  }
  if (err < 0 && -err < 1000)
    return strerror(-err); /* glibc returns a static or thread-local buffer */
  return "unknown error";
}
