#pragma once

#if !defined(HBSYNC_INSIDE) && !defined(HBSYNC_COMPILATION)
#error "Only <hbsync.h> can be included directly."
#endif

#include <glib.h>

#ifndef _HB_EXTERN
#define _HB_EXTERN __attribute__ ((visibility ("default"))) extern
#endif

#define HB_AVAILABLE_IN_ALL _HB_EXTERN
