#pragma once

#define HBSYNC_INSIDE

#include "hb-version-macros.h"
#include "hb-version.h"
#include "hb-enums.h"
#include "hb-vault.h"
#include "hb-store.h"
#include "hb-sync-cache.h"
#include "hb-remote.h"
#include "hb-replicator.h"
#include "hb-sync-config.h"
#include "hb-sync-manager.h"

#undef HBSYNC_INSIDE
