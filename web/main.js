// cairn web UI — starts the page once every module has registered (scripts run in order).
'use strict';

cairn.start();
